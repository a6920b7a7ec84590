"""Calibration: per target layer, running output statistics (Σ y yᵀ, Σ y, frames) in
float64 on the CPU. Activations are never stored (O(d²) per layer), and statistics add
up (``a + b`` equals one pass over both halves), so calibration can be split over jobs."""

import contextlib
import logging
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from espnet_lowrank.batches import describe_batch
from espnet_lowrank.handlers import layer_dims
from espnet_lowrank.progress import progress
from espnet_lowrank.utils import atomic_write

logger = logging.getLogger(__name__)


class OutputStats:
    """Running statistics of one layer's outputs y ∈ R^d: ``gram`` Σ y yᵀ, ``total`` Σ y, ``count``."""

    def __init__(self, dim: int):
        self.dim = dim
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.count = 0

    def update(self, y: torch.Tensor) -> None:
        if y.shape[-1] != self.dim:
            raise ValueError(f"expected outputs of width {self.dim}, got {tuple(y.shape)}")
        y = y.detach().reshape(-1, self.dim).to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(y).all():
            raise FloatingPointError("non-finite activations during calibration; check the input audio "
                                     "and the model weights")
        self.gram += y.T @ y
        self.total += y.sum(0)
        self.count += y.shape[0]

    def __add__(self, other: "OutputStats") -> "OutputStats":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of width {self.dim} and {other.dim}")
        merged = OutputStats(self.dim)
        merged.gram = self.gram + other.gram
        merged.total = self.total + other.total
        merged.count = self.count + other.count
        return merged

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def covariance(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no frames were collected for this layer")
        mean = self.mean
        return self.gram / self.count - torch.outer(mean, mean)

    def state_dict(self) -> dict:
        return {"gram": self.gram.cpu(), "total": self.total.cpu(), "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict) -> "OutputStats":
        stats = cls(state["total"].numel())
        stats.gram = state["gram"].to(torch.float64)
        stats.total = state["total"].to(torch.float64)
        stats.count = int(state["count"])
        return stats


class StatsSet(dict):
    """Layer name -> OutputStats, merged like its members. ``seconds`` and ``peak_rss_mb`` (summed
    and maxed over merged jobs) record what collecting them cost, so split calibration reports it."""

    _META = "__calibration_cost__"

    def __init__(self, *args, seconds: float = 0.0, peak_rss_mb: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = seconds
        self.peak_rss_mb = peak_rss_mb

    def __add__(self, other: "StatsSet") -> "StatsSet":
        if set(self) != set(other):
            raise ValueError(f"cannot merge statistics over different layers: "
                             f"{sorted(set(self) ^ set(other))[:5]} ...")
        return StatsSet({name: self[name] + other[name] for name in self},
                        seconds=self.seconds + other.seconds,
                        peak_rss_mb=max(self.peak_rss_mb, other.peak_rss_mb))

    @property
    def num_frames(self) -> int:
        return max((s.count for s in self.values()), default=0)

    def save(self, path: str) -> None:
        state = {name: s.state_dict() for name, s in self.items()}
        state[self._META] = {"seconds": float(self.seconds), "peak_rss_mb": float(self.peak_rss_mb)}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str) -> "StatsSet":
        state = torch.load(path, map_location="cpu", weights_only=True)
        cost = state.pop(cls._META, {})
        return cls({name: OutputStats.from_state_dict(s) for name, s in state.items()}, **cost)

    @classmethod
    def merge_files(cls, paths: List[str]) -> "StatsSet":
        if not paths:
            raise ValueError("no statistics files to merge")
        return sum((cls.load(path) for path in paths[1:]), cls.load(paths[0]))


class StopForward(Exception):
    """Raised by a hook once every layer of interest has run; ``calibrate`` catches it."""


@contextlib.contextmanager
def collect_output_stats(
    encoder: nn.Module,
    layer_names: Iterable[str],
    frame_mask: Optional["FrameMaskHook"] = None,
    stop_after: bool = False,
) -> Iterator[StatsSet]:
    """Add the named layers' output frames (the valid ones, with ``frame_mask``) to the yielded
    StatsSet on every forward; with ``stop_after``, raise StopForward once all of them ran."""
    modules = dict(encoder.named_modules())
    layer_names = list(layer_names)
    stats, handles, pending = StatsSet(), [], set()

    def make_hook(name: str, layer: nn.Module):
        channels_first = isinstance(layer, nn.Conv1d) or getattr(layer, "channels_first", False)

        def hook(_module, _inputs, output):
            frames = output.transpose(1, 2) if channels_first else output  # to (B, T, d)
            mask = frame_mask.current if frame_mask is not None else None
            if mask is not None:
                if mask.shape != frames.shape[:2]:
                    raise RuntimeError(f"frame mask {tuple(mask.shape)} does not match the output "
                                       f"{tuple(frames.shape[:2])} of {name}")
                frames = frames[mask]
            stats[name].update(frames)
            pending.discard(name)
            if stop_after and not pending:
                raise StopForward

        return hook

    def reset(_module, _inputs):
        pending.update(layer_names)

    try:
        handles.append(encoder.register_forward_pre_hook(reset))
        for name in layer_names:
            if name not in modules:
                raise KeyError(f"no module named {name!r} in the encoder")
            layer = modules[name]
            stats[name] = OutputStats(layer_dims(layer)[1])
            handles.append(layer.register_forward_hook(make_hook(name, layer)))
        if frame_mask is not None:
            handles.extend(frame_mask.attach(encoder))
        yield stats
    finally:
        for handle in handles:
            handle.remove()


class FrameMaskHook:
    """The (B, T) valid-frame mask, ``extract(output)`` of the encoder submodule ``module_name``
    (e.g. ESPnet's ``embed``, which returns ``(xs, masks)``)."""

    def __init__(self, module_name: str, extract: Callable[[object], torch.Tensor]):
        self.module_name = module_name
        self.extract = extract
        self.current: Optional[torch.Tensor] = None

    def attach(self, encoder: nn.Module):
        module = dict(encoder.named_modules())[self.module_name]

        def hook(_module, _inputs, output):
            self.current = self.extract(output).bool()

        return [module.register_forward_hook(hook)]


class NonFiniteActivations(FloatingPointError, ValueError):
    """Non-finite activations in a calibration batch: bad input (e.g. absurdly loud audio), so
    also a ValueError, which the CLI reports in one line."""


def calibrate(
    encode: Callable[[torch.Tensor, torch.Tensor], object],
    encoder: nn.Module,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    layer_names: List[str],
    frame_mask: Optional[FrameMaskHook] = None,
    total: Optional[int] = None,
    stop_after: bool = False,
) -> StatsSet:
    """Output statistics of ``layer_names`` (relative to ``encoder``) over ``encode(speech, lengths)``
    of every batch (at least one); with ``stop_after``, each forward stops once those ran."""
    num_batches = 0
    cut_before = _num_cut(encoder)
    with collect_output_stats(encoder, layer_names, frame_mask, stop_after) as stats:
        with torch.no_grad():
            for speech, lengths in progress(batches, total=total, desc="calibration", unit="batch"):
                try:
                    encode(speech, lengths)
                except StopForward:
                    pass
                except FloatingPointError as e:
                    files = describe_batch(speech)
                    raise NonFiniteActivations(f"{e}; in calibration batch {num_batches + 1}"
                                               + (f", of {files}" if files else "")) from None
                num_batches += 1
    if num_batches == 0:
        raise ValueError("the calibration set is empty: no utterances to calibrate on")
    cut = _num_cut(encoder) - cut_before
    logger.info("calibrated on %d batches, %d frames%s", num_batches, stats.num_frames,
                f"; {cut} rows were cut to the encoder's input window" if cut else "")
    return stats


def _num_cut(encoder: nn.Module) -> int:
    """Rows cut to the front end's fixed input window so far (``num_cut``, counted by Whisper's log-mel)."""
    return sum(getattr(m, "num_cut", 0) for m in encoder.modules())
