"""Measured per-layer sensitivity for the global budget (``ranks.budget``): the relative squared error
of the encoder output with only one layer cut to rank k (its output projected onto its top-k principal
directions, as the factored layer computes). A layer's discarded share of its own output variance lost
badly as an allocation criterion (bench/DECISIONS.md); the allocator sums errors as if independent."""

import itertools
from contextlib import contextmanager
from typing import Dict, Iterable, List, Set, Tuple

import torch

from espnet_lowrank.factorize import Spectrum
from espnet_lowrank.progress import progress
from espnet_lowrank.nn_utils import valid_mask

# The pool's first two calibration windows (3000 encoder frames for Whisper); each probe is one
# encoder forward. Four spread over the pool's corpora lost on VCTK (bench/DECISIONS.md).
NUM_WINDOWS = 2


def _projector(spec: Spectrum, rank: int):
    v = spec.eigenvectors[:, :rank].float()
    mean = spec.mean.float()

    def hook(_module, _inputs, y):
        return mean + ((y - mean) @ v) @ v.T

    return hook


def _encoder_output(model, batch) -> torch.Tensor:
    """(N, D) frames, padding dropped."""
    enc, lens = model.encode(*batch)[:2]
    return enc[valid_mask(lens, enc.shape[1])]


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    return x


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _ancestors(name: str) -> List[str]:
    """"", "a", "a.b" for "a.b.c"."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]


class _DensePrefix:
    """The dense outputs of the modules a probe need not recompute: a probe only changes what runs
    after its layer, so every module that ends before it starts (earlier blocks, the front end, q
    before k) returns its cached output: the same numbers, about half the work. Candidates are the
    children of the probed layers' ancestors that run once per forward; the outermost are cached."""

    def __init__(self, model, batches, layers: List[str]):
        self.modules = dict(model.named_modules())
        ancestors = {a for n in layers for a in _ancestors(n)}
        candidates = [n for n in self.modules if n and _parent(n) in ancestors]
        self.span, calls = self._trace(model, batches[0], candidates)
        once = {n for n in candidates if calls.get(n) == 1}
        # A layer that runs twice (or never) feeds what runs between its calls: no skipping.
        self.skip = {n: self._outermost_before(n, once) if n in once else [] for n in layers}
        self.outputs: Dict[str, list] = {n: [] for s in self.skip.values() for n in s}
        self.dense = self._record(model, batches)
        self.batch = 0

    def _trace(self, model, batch, names):
        """name -> [start, end] event numbers, and name -> calls, of one forward."""
        clock, span, calls, handles = itertools.count(), {}, {}, []

        def started(name):
            span[name] = [next(clock), None]
            calls[name] = calls.get(name, 0) + 1

        def ended(name):
            span[name][1] = next(clock)

        for n in names:
            handles.append(self.modules[n].register_forward_pre_hook(lambda *_, n=n: started(n)))
            handles.append(self.modules[n].register_forward_hook(lambda *_, n=n: ended(n)))
        try:
            model.encode(*batch)
        finally:
            for h in handles:
                h.remove()
        return span, calls

    def _outermost_before(self, layer: str, once: Set[str]) -> List[str]:
        start = self.span[layer][0]
        before = {n for n in once if self.span[n][1] < start}
        return sorted(n for n in before if _parent(n) not in before)

    def _record(self, model, batches) -> List[torch.Tensor]:
        """One dense forward per batch: the encoder outputs; the cached modules' outputs kept."""
        handles = [self.modules[n].register_forward_hook(
            lambda _m, _a, out, n=n: self.outputs[n].append(_clone(out))) for n in self.outputs]
        try:
            return [_encoder_output(model, b) for b in batches]
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def skipping_before(self, layer: str):
        """The modules before ``layer`` return their cached output for ``self.batch``."""
        for n in self.skip[layer]:
            self.modules[n].forward = lambda *_a, n=n, **_k: _clone(self.outputs[n][self.batch])
        try:
            yield
        finally:
            for n in self.skip[layer]:
                del self.modules[n].forward


def measure_sensitivity(
    model,
    batches: List[Tuple[torch.Tensor, torch.Tensor]],
    probes: Dict[str, Tuple[Spectrum, Iterable[int]]],
) -> Dict[str, Dict[int, float]]:
    """name -> {rank: relative squared error of the encoder output with only that layer cut to that
    rank}, for ``probes`` (name -> (spectrum, ranks)) over ``batches``. The model is left as it was."""
    work = [(name, spec, int(k)) for name, (spec, ranks) in probes.items() for k in ranks]
    lost: Dict[str, Dict[int, float]] = {name: {} for name in probes}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prefix = _DensePrefix(model, batches, [f"encoder.{n}" for n in probes])
            energy = sum(float(d.double().pow(2).sum()) for d in prefix.dense)
            for name, spec, k in progress(work, desc="sensitivity", unit="probe"):
                handle = model.encoder.get_submodule(name).register_forward_hook(_projector(spec, k))
                try:
                    err = 0.0
                    with prefix.skipping_before(f"encoder.{name}"):
                        for i, (b, d) in enumerate(zip(batches, prefix.dense)):
                            prefix.batch = i
                            err += float((_encoder_output(model, b) - d).double().pow(2).sum())
                finally:
                    handle.remove()
                lost[name][k] = err / max(energy, 1e-30)
    finally:
        model.train(was_training)
    return lost
