"""Rank-space balancing: rescale each factor pair so that dynamic int8 keeps the small principal
components, without changing what the layer computes.

The bottleneck z = W1 x has one channel per principal component, and their scales fall with the
eigenvalues by orders of magnitude; dynamic int8 quantizes an activation tensor with one scale, so the
small ones round to zero (tiny.en at 76 % kept: +2.6 / +3.7 WER from int8, against +0.3 / +0.2 dense).
Dividing row i of W1 by s_i and multiplying column i of W2 by it keeps W2 W1 and moves range into W2's
columns, which int8 scales per output channel. SmoothQuant's s_i = rms_i^α / max|W2[:, i]|^(1−α) with
α = 0.7 gave the lowest int8 error of the tiny.en encoder (α 0.5 / 0.7 / 0.85, one-pass and after
recovery; bench/DECISIONS.md). rms_i needs no extra pass: z = Vᵀ (y − b), so E[z_i²] = λ_i +
(v_iᵀ (μ − b))²; after recovery these scales measured as well as scales from a forward pass.
"""

from typing import Dict

import torch
from torch import nn

from espnet_lowrank.factorize import Spectrum
from espnet_lowrank.handlers import weight_and_bias

ALPHA = 0.7


def statistics_rms(dense_encoder: nn.Module, ranks: Dict[str, int],
                   spectra: Dict[str, Spectrum]) -> Dict[str, torch.Tensor]:
    """Per planned layer, each bottleneck channel's RMS over the calibration frames, (rank,);
    ``dense_encoder`` supplies the dense biases the statistics were taken with."""
    rms = {}
    for name, rank in ranks.items():
        spec, bias = spectra[name], weight_and_bias(dense_encoder.get_submodule(name))[1]
        b = torch.zeros_like(spec.mean) if bias is None else bias.detach().to(spec.mean)
        offset = spec.eigenvectors[:, :rank].T @ (spec.mean - b)
        rms[name] = (spec.eigenvalues[:rank] + offset ** 2).sqrt()
    return rms


def _floored(x: torch.Tensor) -> torch.Tensor:
    # a zero eigenvalue or column must not turn into an infinite scale
    return x.clamp_min(float(x.max()) * 1e-6 + torch.finfo(x.dtype).tiny)


@torch.no_grad()
def balance_factors_(encoder: nn.Module, rms: Dict[str, torch.Tensor], alpha: float = ALPHA) -> None:
    """Rescale in place the factors of every layer named in ``rms`` (its bottleneck RMS per channel)."""
    for name, channel_rms in rms.items():
        layer = encoder.get_submodule(name)
        rank = channel_rms.numel()
        down = layer.down.weight.view(rank, -1)  # (k, d_in), a view of a Linear or 1x1 Conv1d
        up = layer.up.weight.view(-1, rank)  # (d_out, k)
        scale = _floored(channel_rms.to(down)) ** alpha / _floored(up.abs().amax(0)) ** (1 - alpha)
        down.div_(scale[:, None])
        up.mul_(scale[None, :])
