"""Global rank allocation under a budget (espnet_lowrank.budget)."""

import pytest
import torch

from espnet_lowrank.budget import allocate_ranks as _allocate_ranks
from espnet_lowrank.budget import plan_cost
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.factorize import Spectrum


def _spectrum(eigenvalues) -> Spectrum:
    ev = torch.as_tensor(eigenvalues, dtype=torch.float64)
    d = ev.numel()
    return Spectrum(ev, torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64))


def _decaying(d, rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _spectrum(torch.exp(-rate * torch.arange(d, dtype=torch.float64)) * (1 + 0.1 * torch.rand(d, generator=g, dtype=torch.float64)))


def _losses(spectra):
    """A stand-in for measured sensitivity: each rank's discarded variance
    share (the allocator's arithmetic does not care where losses come from)."""
    return {n: {k: 1.0 - float(ratio) for k, ratio in enumerate(sp.explained_variance().tolist(), start=1)}
            for n, sp in spectra.items()}


def allocate_ranks(spectra, layers, budget, config):
    return _allocate_ranks(spectra, layers, budget, config, _losses(spectra))


def total_loss(spectra, plan):
    losses = _losses(spectra)
    return sum(losses[n][k] for n, k in plan.ranks.items())


def _model(num_blocks=3, d=64, ff=256):
    spectra, layers = {}, {}
    for b in range(num_blocks):
        for i, p in enumerate(("q", "k", "v", "o")):
            name = f"b{b}.attn.{p}"
            layers[name] = ("attention", d, d)
            spectra[name] = _decaying(d, 0.05 + 0.03 * i + 0.01 * b, seed=10 * b + i)
        layers[f"b{b}.ff1"] = ("feed_forward", d, ff)
        spectra[f"b{b}.ff1"] = _decaying(ff, 0.02, seed=100 + b)
        layers[f"b{b}.ff2"] = ("feed_forward", ff, d)
        spectra[f"b{b}.ff2"] = _decaying(d, 0.08, seed=200 + b)
    return spectra, layers


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.75, 1.0])
def test_budget_is_honored_within_one_step(budget):
    spectra, layers = _model()
    config = LowRankConfig(rank_multiple=8)
    plan = allocate_ranks(spectra, layers, budget, config)
    kept, dense = plan_cost(plan)
    assert kept <= budget * dense * (1 + 1e-9)
    step = max(2 * config.ranks.rank_multiple * (d_in + d_out) for _, d_in, d_out in layers.values())
    assert budget * dense - kept < step, (kept, dense)
    for name, rank in plan.ranks.items():
        _, d_in, d_out = layers[name]
        assert rank % 8 == 0 and rank * (d_in + d_out) < d_in * d_out


def test_more_budget_loses_less():
    spectra, layers = _model()
    config = LowRankConfig(rank_multiple=8)
    lost = [total_loss(spectra, allocate_ranks(spectra, layers, b, config)) for b in (0.25, 0.4, 0.55, 0.7, 0.85)]
    assert all(a > b for a, b in zip(lost, lost[1:])), lost
    assert total_loss(spectra, allocate_ranks(spectra, layers, 1.0, config)) <= lost[-1]


def test_a_layer_that_loses_more_keeps_more_rank():
    d = 128
    spectra = {
        "flat": _spectrum(torch.ones(d)),
        "peaked": _spectrum(torch.exp(-0.3 * torch.arange(d, dtype=torch.float64))),
    }
    layers = {"flat": ("attention", d, d), "peaked": ("attention", d, d)}
    plan = allocate_ranks(spectra, layers, 0.5, LowRankConfig(rank_multiple=16))
    flat = plan.ranks.get("flat", d)  # absent: dense
    assert flat > plan.ranks["peaked"]


def test_deterministic_and_full_budget_stays_dense():
    spectra, layers = _model()
    a = allocate_ranks(spectra, layers, 0.5, LowRankConfig())
    b = allocate_ranks(dict(reversed(list(spectra.items()))), layers, 0.5, LowRankConfig())
    assert a.ranks == b.ranks
    assert allocate_ranks(spectra, layers, 1.0, LowRankConfig()).ranks == {}


def test_rank_pattern_is_fixed_and_counted():
    spectra, layers = _model()
    config = LowRankConfig(rank_multiple=8, rank_pattern={r"b0\.ff1": 24})
    plan = allocate_ranks(spectra, layers, 0.5, config)
    assert plan.ranks["b0.ff1"] == 24
    kept, dense = plan_cost(plan)
    assert kept <= 0.5 * dense * (1 + 1e-9)


def test_bad_budgets_fail_clearly():
    spectra, layers = _model()
    with pytest.raises(ValueError, match="budget must be"):
        allocate_ranks(spectra, layers, 0.0, LowRankConfig())
    with pytest.raises(ValueError, match="below the smallest reachable"):
        allocate_ranks(spectra, layers, 0.01, LowRankConfig(rank_multiple=16))
    with pytest.raises(ValueError, match="no calibration statistics"):
        _allocate_ranks({}, layers, 0.5, LowRankConfig(), _losses(spectra))
    with pytest.raises(ValueError, match="no measured sensitivity for layer b0.attn.q"):
        _allocate_ranks(spectra, layers, 0.5, LowRankConfig(), {})
