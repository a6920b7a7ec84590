"""Calibration: stream audio through the encoder (dense, or partly factored in
sequential mode) and keep, per target layer, the running output statistics
(Σ y yᵀ, Σ y, frame count) in float64 on the CPU, whatever device the model
runs on.

Activations are never stored: memory is O(d²) per layer. Statistics add up
(``a + b`` equals one pass over both halves), so calibration can be split
over jobs and merged afterwards.
"""

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
    """Running statistics of one layer's outputs y ∈ R^d: ``gram`` Σ y yᵀ
    (d, d) and ``total`` Σ y (d,) in float64, ``count`` frames."""

    def __init__(self, dim: int, device: Optional[torch.device] = None):
        self.dim = dim
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = 0

    def update(self, y: torch.Tensor) -> None:
        """Add frames y of shape (N, d)."""
        if y.shape[-1] != self.dim:
            raise ValueError(f"expected outputs of width {self.dim}, got {tuple(y.shape)}")
        y = y.detach().reshape(-1, self.dim).to(device=self.gram.device, dtype=torch.float64)
        if not torch.isfinite(y).all():
            raise FloatingPointError("non-finite activations during calibration; check the input audio "
                                     "and the model weights")
        self.gram += y.T @ y
        self.total += y.sum(0)
        self.count += y.shape[0]

    def __add__(self, other: "OutputStats") -> "OutputStats":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of width {self.dim} and {other.dim}")
        merged = OutputStats(self.dim, self.gram.device)
        merged.gram = self.gram + other.gram.to(self.gram.device)
        merged.total = self.total + other.total.to(self.gram.device)
        merged.count = self.count + other.count
        return merged

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def covariance(self) -> torch.Tensor:
        """Centered output covariance, (d, d) float64."""
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
    """Layer name -> OutputStats, with the same merge rule as its members.

    ``seconds`` and ``peak_rss_mb`` record what collecting them cost (summed
    and maxed over merged jobs), so split calibration reports its real cost.
    """

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
        merged = cls.load(paths[0])
        for path in paths[1:]:
            merged = merged + cls.load(path)
        return merged


def frames_of(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """(B, T, d) frames of a layer's input or output; Conv1d tensors are (B, d, T)."""
    if isinstance(layer, nn.Conv1d) or getattr(layer, "channels_first", False):
        return tensor.transpose(1, 2)
    return tensor


class StopForward(Exception):
    """Raised by a hook once every layer of interest has run, so that a
    forward pass stops there; ``calibrate`` catches it."""


@contextlib.contextmanager
def collect_output_stats(
    encoder: nn.Module,
    layer_names: Iterable[str],
    frame_mask: Optional["FrameMaskHook"] = None,
    device: Optional[torch.device] = None,
    stop_after: bool = False,
) -> Iterator[StatsSet]:
    """Hook the named layers of ``encoder``; on every forward, add their
    output frames (only the valid ones when ``frame_mask`` is given) to the
    yielded StatsSet, on ``device`` (default CPU) in float64. With
    ``stop_after``, raise StopForward once all of them ran in a forward. The
    hooks are removed on exit, whatever happens.
    """
    modules = dict(encoder.named_modules())
    layer_names = list(layer_names)
    stats = StatsSet()
    handles = []
    pending = set()

    def make_hook(name: str, layer: nn.Module):
        def hook(_module, _inputs, output):
            frames = frames_of(layer, output)
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
            stats[name] = OutputStats(layer_dims(layer)[1], device=device)
            handles.append(layer.register_forward_hook(make_hook(name, layer)))
        if frame_mask is not None:
            handles.extend(frame_mask.attach(encoder))
        yield stats
    finally:
        for handle in handles:
            handle.remove()


class FrameMaskHook:
    """Captures the (B, T) valid-frame mask, ``extract(output)``, from the
    output of the encoder submodule ``module_name`` (e.g. ESPnet's ``embed``,
    which returns ``(xs, masks)``)."""

    def __init__(self, module_name: str, extract: Callable[[object], torch.Tensor]):
        self.module_name = module_name
        self.extract = extract
        self.current: Optional[torch.Tensor] = None

    def attach(self, encoder: nn.Module):
        module = dict(encoder.named_modules())[self.module_name]

        def hook(_module, _inputs, output):
            self.current = self.extract(output).bool()

        return [module.register_forward_hook(hook)]


Batch = Tuple[torch.Tensor, torch.Tensor]


class NonFiniteActivations(FloatingPointError, ValueError):
    """Non-finite activations in a calibration batch, naming its files: bad
    input (e.g. absurdly loud audio), so also a ValueError, which the CLI
    reports in one line."""


def calibrate(
    encode: Callable[[torch.Tensor, torch.Tensor], object],
    encoder: nn.Module,
    batches: Iterable[Batch],
    layer_names: List[str],
    frame_mask: Optional[FrameMaskHook] = None,
    device: Optional[torch.device] = None,
    total: Optional[int] = None,
    stop_after: bool = False,
) -> StatsSet:
    """Run ``encode(speech, lengths)`` over every batch (at least one) and
    return the output statistics of ``layer_names`` (names relative to
    ``encoder``); with ``stop_after``, each forward stops once those ran."""
    num_batches = 0
    cut_before = _num_cut(encoder)
    with collect_output_stats(encoder, layer_names, frame_mask, device, stop_after) as stats:
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
    """Rows the encoder's front end has cut to its fixed input window so far
    (``num_cut``, counted by Whisper's log-mel)."""
    return sum(getattr(m, "num_cut", 0) for m in encoder.modules())
