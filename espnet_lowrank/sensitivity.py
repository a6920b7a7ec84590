"""Measured per-layer sensitivity for the global budget (``ranks.budget``).

A layer's discarded share of its own output variance says nothing about what
the rest of the encoder does with that error (as an allocation criterion it
lost badly, bench/RESULTS.md). Here each layer's cost of a cut is measured end
to end: with
only that layer cut to rank k (its output projected onto its top-k principal
directions, exactly what the factored layer computes), the relative squared
error of the encoder output against the dense one, on a few calibration
windows. The budget allocator then spends rank where this error falls most
per unit of cost; the errors of different layers are summed as if they were
independent.
"""

from typing import Dict, Iterable, List, Tuple

import torch

from espnet_lowrank.factorize import Spectrum
from espnet_lowrank.progress import progress
from espnet_lowrank.recovery import valid_mask

# Windows of calibration audio the errors are measured on: two 30 s windows
# are 3000 encoder frames for Whisper; each probe is one encoder forward.
NUM_WINDOWS = 2


def _projector(spec: Spectrum, rank: int):
    v = spec.eigenvectors[:, :rank].float()
    mean = spec.mean.float()

    def hook(_module, _inputs, y):
        return mean + ((y - mean) @ v) @ v.T

    return hook


def _encoder_output(model, batch) -> torch.Tensor:
    """Encoder output frames (N, D) of one batch, padding dropped."""
    enc, lens = model.encode(*batch)[:2]
    return enc[valid_mask(lens, enc.shape[1])]


def measure_sensitivity(
    model,
    batches: List[Tuple[torch.Tensor, torch.Tensor]],
    probes: Dict[str, Tuple[Spectrum, Iterable[int]]],
) -> Dict[str, Dict[int, float]]:
    """name -> {rank: relative squared error of the encoder output when only
    that layer is cut to that rank}, for ``probes`` (name -> (spectrum, ranks)),
    over ``batches`` of ``model.encode`` inputs. The model is left as it was."""
    modules = dict(model.encoder.named_modules())
    work = [(name, spec, int(k)) for name, (spec, ranks) in probes.items() for k in ranks]
    lost: Dict[str, Dict[int, float]] = {name: {} for name in probes}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dense = [_encoder_output(model, b) for b in batches]
            energy = sum(float(d.double().pow(2).sum()) for d in dense)
            for name, spec, k in progress(work, desc="sensitivity", unit="probe"):
                handle = modules[name].register_forward_hook(_projector(spec, k))
                try:
                    err = sum(float((_encoder_output(model, b) - d).double().pow(2).sum())
                              for b, d in zip(batches, dense))
                finally:
                    handle.remove()
                lost[name][k] = err / max(energy, 1e-30)
    finally:
        model.train(was_training)
    return lost
