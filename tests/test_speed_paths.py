"""Every fast path of the compressed encoders is exact at full rank (CPU).

Rank-space attention (fused down-projections, heads stacked over shared
keys, cached folded matrices) and its plain fallback, whichever the measured
dispatch picks, must equal dense attention; the cache must follow in-place
weight updates; the budget path of ``compress`` must build a working model.
"""

import pytest
import torch
from torch import nn

from espnet_lowrank.calibration import OutputStats
from espnet_lowrank.factorize import factor_weights, spectrum
from espnet_lowrank.modules import attention as attention_module
from espnet_lowrank.modules.attention import ReducedSelfAttention
from espnet_lowrank.modules.lowrank_linear import LowRankLinear
from test_lowrank_math import reference_attention


def _full_rank(layer: nn.Linear, x: torch.Tensor) -> LowRankLinear:
    with torch.no_grad():
        y = layer(x)
    stats = OutputStats(y.shape[-1])
    stats.update(y.double())
    w1, w2, b = factor_weights(layer.weight, layer.bias, spectrum(stats), min(layer.weight.shape))
    return LowRankLinear.from_factors(w1.float(), w2.float(), b.float())


def _setup(factored, d=48, h=4, t=20, seed=0):
    torch.manual_seed(seed)
    projections = [nn.Linear(d, d) for _ in range(4)]
    x = torch.randn(2, t, d)
    frames = torch.randn(2000, d)
    if factored == "all":
        layers = [_full_rank(p, frames) for p in projections]
    elif factored == "mixed":  # value and out stay dense: the identity factor, no fused GEMM
        layers = [_full_rank(p, frames) for p in projections[:2]] + projections[2:]
    else:
        layers = list(projections)
    return x, projections, layers, h


@pytest.fixture
def dispatch(monkeypatch):
    """Returns a ReducedSelfAttention factory with the dispatch mode set
    explicitly (a constructor argument), on an empty measurement cache."""

    def with_mode(mode):
        monkeypatch.setattr(attention_module, "_DISPATCH_CACHE", {})

        def build(*args, **kwargs):
            return ReducedSelfAttention(*args, dispatch=mode, **kwargs)

        return build

    return with_mode


@pytest.mark.parametrize("mode", ["reduced", "flops", "measure"])
@pytest.mark.parametrize("factored", ["all", "mixed", "none"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_every_attention_path_is_exact_at_full_rank(dispatch, mode, factored, with_mask):
    build = dispatch(mode)
    x, dense_layers, layers, h = _setup(factored)
    valid = torch.tensor([[True] * 20, [True] * 13 + [False] * 7]) if with_mask else None
    with torch.no_grad():
        want = reference_attention(x, *dense_layers, h, valid)
    reduced = build(*layers, h).eval()
    with torch.inference_mode():
        got = reduced(x, key_padding_mask=valid)
        again = reduced(x, key_padding_mask=valid)  # cached folded matrices / cached dispatch
    sel = valid if valid is not None else slice(None)
    assert (got - want)[sel].abs().max().item() < 1e-4
    assert torch.equal(got, again)
    # both explicit paths, whatever the dispatch picked
    with torch.inference_mode():
        for path in (reduced._reduced_forward, reduced._dense_forward):
            assert (path(x, valid) - want)[sel].abs().max().item() < 1e-4
    if mode == "measure":
        assert set(attention_module._DISPATCH_CACHE.values()) <= {"reduced", "dense"}
        assert len(attention_module._DISPATCH_CACHE) == 1


def test_training_and_autograd_take_the_rank_space_path(dispatch):
    build = dispatch("measure")
    x, dense_layers, layers, h = _setup("all")
    reduced = build(*layers, h)
    y = reduced(x)  # grad enabled: no measuring, no cache
    y.sum().backward()
    assert attention_module._DISPATCH_CACHE == {}
    assert reduced._cache is None
    assert layers[0].down.weight.grad is not None
    assert (y - reference_attention(x, *dense_layers, h)).abs().max().item() < 1e-4


def test_folded_cache_follows_in_place_weight_updates(dispatch):
    build = dispatch("reduced")
    x, _, layers, h = _setup("all")
    reduced = build(*layers, h).eval()
    with torch.inference_mode():
        before = reduced(x)
    first_key = reduced._cache_key
    with torch.no_grad():
        reduced.query.up.weight.mul_(2.0)
        reduced.value.up.bias.add_(0.5)
    with torch.inference_mode():
        after = reduced(x)
    assert reduced._cache_key != first_key
    with torch.no_grad():
        want = reference_attention(x, *(p.to_dense() for p in layers), h)
    assert (after - want).abs().max().item() < 1e-4
    assert (after - before).abs().max().item() > 1e-3
    # a new state dict (new storage) also invalidates
    reduced.load_state_dict({k: v.clone() * 0.5 for k, v in reduced.state_dict().items()})
    with torch.inference_mode():
        halved = reduced(x)
    with torch.no_grad():
        want = reference_attention(x, *(p.to_dense() for p in layers), h)
    assert (halved - want).abs().max().item() < 1e-4


def test_whisper_attention_fast_path_matches_whisper(dispatch):
    whisper_model = pytest.importorskip("whisper.model")
    from espnet_lowrank.modules.attention import WhisperReducedAttention

    dispatch("measure")  # an empty cache
    torch.manual_seed(3)
    d, h, t = 64, 4, 30
    mha = whisper_model.MultiHeadAttention(d, h).eval()
    x = torch.randn(1, t, d)
    with torch.inference_mode():
        want = mha(x)[0]
    frames = torch.randn(3000, d)
    parts = [mha.query, mha.key, mha.value, mha.out]
    lowrank = []
    for p in parts:
        if p.bias is None:  # whisper's key has no bias
            q = nn.Linear(d, d)
            with torch.no_grad():
                q.weight.copy_(p.weight)
                q.bias.zero_()
            p = q
        lowrank.append(_full_rank(p, frames))
    reduced = WhisperReducedAttention(*lowrank, h, dispatch="measure").eval()
    with torch.inference_mode():
        got, _ = reduced(x)
    assert (got - want).abs().max().item() < 1e-4


def test_budget_plan_runs_through_the_fast_paths(dispatch):
    """A budget plan on real (ESPnet Transformer) statistics factors layers
    that then run, reduced attention included, and full rank is exact."""
    dispatch("measure")
    from test_families import _batch, _build, _calibrated, _encode

    from espnet_lowrank.apply import choose_attention_, factorize_layers_
    from espnet_lowrank.budget import plan_cost
    # the allocator with a stand-in for measured sensitivity (no audio needed here)
    from test_budget import allocate_ranks
    from espnet_lowrank.config import LowRankConfig

    family, encoder = _build("transformer")
    stats, _ = _calibrated(encoder, family)
    targets = family.target_layers(encoder)
    spectra = {n: spectrum(stats[n]) for n in targets}
    config = LowRankConfig(budget=0.5, rank_multiple=4)
    plan = allocate_ranks(spectra, targets, config.ranks.budget, config)
    kept, dense = plan_cost(plan)
    assert plan.ranks and kept <= 0.5 * dense * (1 + 1e-9)
    with pytest.raises(ValueError, match="budget"):
        LowRankConfig(budget=1.5)
    batch = _batch(seed=5)
    want, valid, _ = _encode(encoder, batch)
    import copy

    lowrank = copy.deepcopy(encoder)
    factorize_layers_(lowrank, plan.ranks, spectra)
    choose_attention_(lowrank, family, "reduced", 100)
    got, _, _ = _encode(lowrank, batch)
    assert got.isfinite().all()
    full = copy.deepcopy(encoder)
    factorize_layers_(full, {n: min(d_in, d_out) for n, (_, d_in, d_out) in targets.items()}, spectra)
    choose_attention_(full, family, "reduced", 100)
    got, _, _ = _encode(full, batch)
    assert (got - want)[valid].abs().max().item() < 1e-4
