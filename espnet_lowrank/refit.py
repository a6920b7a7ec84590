"""Least-squares refit of a low-rank layer against the dense model.

Sequential calibration feeds layer ℓ the inputs x̃ that the *compressed*
earlier layers produce, while the dense model's layer ℓ would output
y = W x + b on its own (dense) inputs x. The refit picks the rank-k map that
best reproduces the dense outputs from the inputs the layer will really see
(reduced-rank regression, as in SVD-LLM's truncation-aware whitening):

    min_{rank(A) ≤ k, c}  E ‖y − A x̃ − c‖²

With centered moments C = Cov(x̃), S = Cov(y, x̃), the unconstrained solution
is W* = S C⁻¹ (regularized toward the dense W: (S + λW)(C + λI)⁻¹); the rank-k optimum is A = V_k V_kᵀ W*, V_k the top-k
eigenvectors of W* C W*ᵀ (the covariance of the fitted outputs), and
c = ȳ − A x̄̃. So W1 = V_kᵀ W*, W2 = V_k, bias c. Everything comes from
running sums (Σx̃x̃ᵀ, Σyx̃ᵀ, Σx̃, Σy, Σ‖y‖², frame count) in float64:
O(d_in² + d_out·d_in) memory per layer, and activations are never stored.
"""

from typing import Optional, Tuple

import torch

from espnet_lowrank.factorize import Spectrum, spectrum_from_covariance


class RegressionStats:
    """Running moments of a layer's (compressed-model) inputs x̃ and, when a
    target is given, of the dense layer's outputs y on the same frames."""

    def __init__(self, d_in: int, d_out: int, with_target: bool):
        f64 = dict(dtype=torch.float64)
        self.d_in, self.d_out = d_in, d_out
        self.xx = torch.zeros(d_in, d_in, **f64)
        self.x_sum = torch.zeros(d_in, **f64)
        self.count = 0
        self.with_target = with_target
        if with_target:
            self.yx = torch.zeros(d_out, d_in, **f64)
            self.y_sum = torch.zeros(d_out, **f64)
            self.y_sq = 0.0

    def update(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """Add frames x (N, d_in) and, with a target, y (N, d_out)."""
        x = x.detach().reshape(-1, self.d_in).to(torch.float64)
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                "non-finite activations during calibration; check the input audio and the model"
            )
        self.xx += x.T @ x
        self.x_sum += x.sum(0)
        self.count += x.shape[0]
        if self.with_target:
            if y is None:
                raise ValueError("this layer is refit: the dense outputs are needed")
            y = y.detach().reshape(-1, self.d_out).to(torch.float64)
            if y.shape[0] != x.shape[0]:
                raise RuntimeError(f"dense outputs ({y.shape[0]} frames) and compressed inputs "
                                   f"({x.shape[0]} frames) do not pair up")
            self.yx += y.T @ x
            self.y_sum += y.sum(0)
            self.y_sq += float((y * y).sum())

    def nbytes(self) -> int:
        tensors = [self.xx, self.x_sum] + ([self.yx, self.y_sum] if self.with_target else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def input_moments(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean, covariance) of x̃."""
        if self.count == 0:
            raise ValueError("no frames were collected for this layer")
        mx = self.x_sum / self.count
        cxx = self.xx / self.count - torch.outer(mx, mx)
        return mx, 0.5 * (cxx + cxx.T)


def output_spectrum(stats: RegressionStats, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Spectrum:
    """Spectrum of the dense layer's outputs W x̃ + b on the compressed model's
    inputs: what one-pass PCA would measure at this point of the model."""
    w = weight.detach().to(torch.float64)
    b = bias.detach().to(torch.float64) if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    mx, cxx = stats.input_moments()
    return spectrum_from_covariance(w @ cxx @ w.T, w @ mx + b)


def refit_factors(stats: RegressionStats, rank: int, ridge: float = 1e-2,
                  weight: Optional[torch.Tensor] = None):
    """(W1 (k, d_in), W2 (d_out, k), bias (d_out,)) in float64 minimizing
    E‖y − W2 W1 x̃ − bias‖² over the calibration frames.

    Args:
        stats: moments with a target (``with_target=True``).
        rank: k.
        ridge: Tikhonov term, relative to the mean input variance; keeps C
            invertible where inputs are (nearly) collinear, e.g. padding frames.
        weight: the dense layer's W; when given, the ridge pulls W* toward W
            instead of toward 0, so input directions the calibration frames
            barely cover keep the dense map (a huge ridge gives PCA back).

    Raises:
        ValueError: rank out of range, or no target statistics.
        FloatingPointError: if the solution is not finite.
    """
    if not stats.with_target:
        raise ValueError("refit needs the dense layer's outputs (with_target=True)")
    if not 0 < rank <= min(stats.d_in, stats.d_out):
        raise ValueError(f"rank {rank} is larger than the layer ({stats.d_out}x{stats.d_in}) allows")
    mx, cxx = stats.input_moments()
    my = stats.y_sum / stats.count
    cyx = stats.yx / stats.count - torch.outer(my, mx)
    reg = ridge * float(torch.diagonal(cxx).mean().clamp_min(1e-12))
    eye = torch.eye(stats.d_in, dtype=torch.float64)
    anchor = cyx if weight is None else cyx + reg * weight.detach().to(torch.float64)
    w_star = torch.linalg.solve(cxx + reg * eye, anchor.T).T  # (S + λW)(C + λI)⁻¹
    fitted = w_star @ cxx @ w_star.T
    _, vecs = torch.linalg.eigh(0.5 * (fitted + fitted.T))
    v = vecs.flip(1)[:, :rank]  # eigh sorts ascending
    w1 = v.T @ w_star
    w2 = v
    bias = my - w2 @ (w1 @ mx)
    for name, t in (("W1", w1), ("W2", w2), ("bias", bias)):
        if not torch.isfinite(t).all():
            raise FloatingPointError(f"non-finite {name} in the least-squares refit")
    return w1, w2, bias


def relative_error(stats: RegressionStats, w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor) -> float:
    """E‖y − (W2 W1 x̃ + bias)‖² / E‖y − ȳ‖² over the calibration frames, from
    the moments alone."""
    n = stats.count
    mx, cxx = stats.input_moments()
    my = stats.y_sum / n
    a = w2.to(torch.float64) @ w1.to(torch.float64)
    c = bias.to(torch.float64)
    # E‖y‖² − 2 E[yᵀ(Ax̃ + c)] + E‖Ax̃ + c‖²
    exx = cxx + torch.outer(mx, mx)
    e_yy = stats.y_sq / n
    e_y_fit = float(torch.sum(a * (stats.yx / n)) + my @ c)
    e_fit_fit = float(torch.sum((a @ exx) * a) + 2 * c @ (a @ mx) + c @ c)
    var_y = e_yy - float(my @ my)
    return max(e_yy - 2 * e_y_fit + e_fit_fit, 0.0) / max(var_y, 1e-30)
