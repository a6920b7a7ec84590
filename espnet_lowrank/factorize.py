"""Factorization: y = W x + b  ->  y ≈ W2 (W1 x) + b′ from centered PCA of y.

With μ the output mean and V_k the top-k eigenvectors of the output covariance, W1 = V_kᵀ W (k, d_in),
W2 = V_k (d_out, k) and b′ = μ + V_k V_kᵀ (b − μ), so that ŷ = μ + V_k V_kᵀ (y − μ), the best rank-k
reconstruction of y in the mean-squared sense over the calibration frames.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from espnet_lowrank.calibration import OutputStats


@dataclass
class Spectrum:
    """Eigen-decomposition of one layer's output covariance, largest first."""

    eigenvalues: torch.Tensor  # (d,) float64, clamped at 0
    eigenvectors: torch.Tensor  # (d, d) float64, columns
    mean: torch.Tensor  # (d,) float64

    def explained_variance(self) -> torch.Tensor:
        """Cumulative explained-variance ratio, (d,)."""
        total = self.eigenvalues.sum()
        if total <= 0:
            return torch.ones_like(self.eigenvalues)
        return torch.cumsum(self.eigenvalues, 0) / total

    def rank_for(self, theta: float) -> int:
        """Smallest k whose top-k components explain at least θ of the variance."""
        if not 0.0 < theta <= 1.0:
            raise ValueError(f"explained-variance threshold must be in (0, 1], got {theta}")
        ratios = self.explained_variance()
        k = int(torch.searchsorted(ratios, torch.tensor(theta, dtype=ratios.dtype)).item()) + 1
        return min(k, ratios.numel())


def spectrum(stats: OutputStats) -> Spectrum:
    cov = stats.covariance()
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (cov + cov.T))  # exact symmetry for eigh
    order = torch.argsort(eigenvalues, descending=True)
    return Spectrum(eigenvalues[order].clamp_min(0.0), eigenvectors[:, order], stats.mean)


def factor_weights(weight: torch.Tensor, bias: Optional[torch.Tensor], spec: Spectrum,
                   rank: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W1, W2, b′) in float64 for a dense layer (weight (d_out, d_in)); FloatingPointError if not finite."""
    d_out, d_in = weight.shape
    if not 0 < rank <= min(d_in, d_out):
        raise ValueError(f"rank {rank} is larger than the layer ({d_out}x{d_in}) allows")
    if spec.eigenvectors.shape[0] != d_out:
        raise ValueError(f"statistics of width {spec.eigenvectors.shape[0]} do not match a layer with "
                         f"{d_out} outputs")
    w = weight.detach().to(device=spec.eigenvectors.device, dtype=torch.float64)
    v = spec.eigenvectors[:, :rank]
    b = torch.zeros(d_out) if bias is None else bias.detach()
    b = b.to(device=v.device, dtype=torch.float64)
    w1 = v.T @ w
    b_new = spec.mean + v @ (v.T @ (b - spec.mean))
    for name, t in (("W1", w1), ("W2", v), ("bias", b_new)):
        if not torch.isfinite(t).all():
            raise FloatingPointError(f"non-finite {name} in the factorization")
    return w1, v, b_new
