"""Least-squares refit (espnet_lowrank.refit) on small random layers: it is
the regression it claims to be, its error formula matches the frames, and at
a given rank it beats PCA when the inputs it sees are perturbed."""

import pytest
import torch
from torch import nn

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.factorize import factor_weights
from espnet_lowrank.refit import RegressionStats, output_spectrum, refit_factors, relative_error


def _problem(n=5000, d_in=24, d_out=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, d_in, generator=g)
    x = torch.randn(n, 6, generator=g) @ basis + 0.1 * torch.randn(n, d_in, generator=g)
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        y = layer(x)  # dense outputs on dense inputs
    x_tilde = x + 0.3 * torch.randn(n, d_in, generator=g) @ torch.randn(d_in, d_in, generator=g) / d_in ** 0.5
    stats = RegressionStats(d_in, d_out, with_target=True)
    for i in range(0, n, 1000):  # in chunks: sums must not care
        stats.update(x_tilde[i:i + 1000].double(), y[i:i + 1000].double())
    return layer, x_tilde.double(), y.double(), stats


def _direct_error(x, y, w1, w2, b):
    pred = x @ (w2 @ w1).T + b
    return float(((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_full_rank_refit_is_ordinary_least_squares():
    _, x, y, stats = _problem()
    w1, w2, b = refit_factors(stats, rank=20, ridge=0.0)
    ones = torch.ones(x.shape[0], 1, dtype=torch.float64)
    sol = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution  # (d_in + 1, d_out)
    assert torch.allclose(w2 @ w1, sol[:-1].T, atol=1e-8)
    assert torch.allclose(b, sol[-1], atol=1e-8)


def test_relative_error_matches_the_frames():
    _, x, y, stats = _problem()
    for rank in (3, 8, 20):
        w1, w2, b = refit_factors(stats, rank, ridge=0.0)
        assert relative_error(stats, w1, w2, b) == pytest.approx(_direct_error(x, y, w1, w2, b), rel=1e-6)


def test_refit_beats_pca_at_every_rank_and_error_falls_with_rank():
    layer, x, y, stats = _problem()
    spec = output_spectrum(stats, layer.weight, layer.bias)
    errors = []
    for rank in (2, 4, 8, 16):
        pca = factor_weights(layer.weight, layer.bias, spec, rank)
        refit = refit_factors(stats, rank, ridge=0.0)
        e_pca, e_refit = _direct_error(x, y, *pca), _direct_error(x, y, *refit)
        assert e_refit < e_pca, (rank, e_refit, e_pca)
        errors.append(e_refit)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_output_spectrum_is_pca_of_the_layer_outputs():
    layer, x, _, stats = _problem()
    with torch.no_grad():
        out = layer(x.float()).double()
    cov = torch.cov(out.T, correction=0)
    spec = output_spectrum(stats, layer.weight, layer.bias)
    assert torch.allclose(spec.eigenvalues, torch.linalg.eigvalsh(cov).flip(0).clamp_min(0), rtol=1e-4, atol=1e-6)
    assert torch.allclose(spec.mean, out.mean(0), atol=1e-4)


def test_refit_bad_input():
    _, _, _, stats = _problem()
    with pytest.raises(ValueError, match="larger than the layer"):
        refit_factors(stats, rank=21)
    no_target = RegressionStats(4, 3, with_target=False)
    no_target.update(torch.randn(10, 4))
    with pytest.raises(ValueError, match="dense layer's outputs"):
        refit_factors(no_target, rank=2)
    with pytest.raises(FloatingPointError, match="non-finite"):
        no_target.update(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match="sequential: true"):
        LowRankConfig(refit="all")
    with pytest.raises(ValueError, match="refit must be one of"):
        LowRankConfig(sequential=True, refit="qk")
    with pytest.raises(ValueError, match="elastic"):
        LowRankConfig(recovery_steps=10, elastic=True)


def test_ridge_anchored_at_the_dense_weight_interpolates_to_pca():
    layer, x, y, stats = _problem()
    w = layer.weight.detach()
    pca = factor_weights(w, layer.bias, output_spectrum(stats, w, layer.bias), 4)
    near_pca = refit_factors(stats, 4, ridge=1e8, weight=w)
    assert torch.allclose(near_pca[1] @ near_pca[0], pca[1] @ pca[0], atol=1e-5)
    # ... and the bias too, up to the shift of the output mean: the refit
    # targets the dense mean ȳ, PCA the mean of W x̃ + b.
    shift = y.mean(0) - (x @ w.double().T + layer.bias.detach().double()).mean(0)
    assert torch.allclose(near_pca[2], pca[2].to(torch.float64) + shift, atol=1e-5)
    free = refit_factors(stats, 4, ridge=0.0, weight=w)
    assert _direct_error(x, y, *free) < _direct_error(x, y, *near_pca)
