"""The engine's math on small random layers: full rank is exact, error falls
with rank, statistics merge, and bad input fails clearly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from espnet_lowrank.calibration import (
    FrameMaskHook,
    OutputStats,
    StatsSet,
    calibrate,
    collect_output_stats,
)
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.factorize import factor_weights, spectrum
from espnet_lowrank.modules.attention import ReducedSelfAttention, attention_flops
from espnet_lowrank.modules.lowrank_linear import LowRankConv1d, LowRankLinear
from espnet_lowrank.plan import make_plan

torch.manual_seed(0)


def _correlated_inputs(n=4000, d=32, effective=8):
    basis = torch.randn(effective, d)
    return torch.randn(n, effective) @ basis + 0.05 * torch.randn(n, d)


def _stats_of(layer, x):
    with torch.no_grad():
        y = layer(x)
    stats = OutputStats(y.shape[-1])
    stats.update(y.double())
    return stats


def _factored(layer, x, rank):
    w1, w2, b = factor_weights(layer.weight, layer.bias, spectrum(_stats_of(layer, x)), rank)
    return LowRankLinear.from_factors(w1.float(), w2.float(), b.float())


def test_full_rank_lowrank_linear_equals_dense():
    layer = nn.Linear(32, 24)
    x = _correlated_inputs()
    lowrank = _factored(layer, x, rank=24)
    diff = (lowrank(x) - layer(x)).abs().max().item()
    assert diff < 1e-4, diff
    assert torch.allclose(lowrank.to_dense().weight, layer.weight, atol=1e-5)


def test_error_falls_as_rank_grows():
    layer = nn.Linear(32, 32)
    x = _correlated_inputs()
    y = layer(x).detach()
    errors = []
    for rank in (2, 4, 8, 16, 32):
        approx = _factored(layer, x, rank)(x).detach()
        errors.append(((approx - y).norm() / y.norm()).item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[2] < 0.05  # 8 components hold the signal
    assert errors[-1] < 1e-5


def test_conv1x1_factors_match_linear_view():
    conv = nn.Conv1d(16, 12, 1)
    x = torch.randn(3, 16, 50)
    frames = x.transpose(1, 2).reshape(-1, 16)
    weight, bias = conv.weight[..., 0], conv.bias
    stats = OutputStats(12)
    stats.update(F.linear(frames, weight, bias).detach())
    w1, w2, b = factor_weights(weight, bias, spectrum(stats), 12)
    lowrank = LowRankConv1d.from_factors(w1.float(), w2.float(), b.float())
    assert (lowrank(x) - conv(x)).abs().max().item() < 1e-4


def test_split_statistics_merge_to_one_pass():
    y = torch.randn(1000, 16)
    whole = OutputStats(16)
    whole.update(y)
    left, right = OutputStats(16), OutputStats(16)
    left.update(y[:300])
    right.update(y[300:])
    merged = StatsSet({"a": left}) + StatsSet({"a": right})
    assert merged["a"].count == 1000
    assert torch.allclose(merged["a"].gram, whole.gram, rtol=1e-12, atol=1e-9)
    assert torch.allclose(merged["a"].total, whole.total, rtol=1e-12, atol=1e-9)


def test_statistics_save_load_roundtrip(tmp_path):
    stats = OutputStats(8)
    stats.update(torch.randn(100, 8))
    path = str(tmp_path / "stats.pt")
    StatsSet({"x": stats}, seconds=2.5, peak_rss_mb=300.0).save(path)
    loaded = StatsSet.load(path)
    assert set(loaded) == {"x"} and loaded["x"].count == 100
    assert torch.equal(loaded["x"].gram, stats.gram)
    # What calibrating cost travels with the file: summed time, max RSS when merged.
    merged = StatsSet.merge_files([path, path])
    assert (merged.seconds, merged.peak_rss_mb) == (5.0, 300.0)


def test_masked_frames_are_not_counted():
    layer = nn.Linear(4, 4)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = layer

        def forward(self, x):
            return self.proj(x)

    encoder = Encoder()
    with collect_output_stats(encoder, ["proj"]) as stats:
        with torch.no_grad():
            encoder(torch.randn(2, 3, 4))
    assert stats["proj"].count == 6
    # With a mask source, only the valid frames count.
    hook = FrameMaskHook("mask_source", lambda out: out)

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.mask_source = nn.Identity()
            self.proj = layer

        def forward(self, x, mask):
            self.mask_source(mask)
            return self.proj(x)

    masked = Masked()
    with collect_output_stats(masked, ["proj"], frame_mask=hook) as stats:
        with torch.no_grad():
            masked(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert stats["proj"].count == 3


def reference_attention(x, query, key, value, out, n_head, valid=None):
    """Plain multi-head self-attention from four linear maps (the reference
    the rank-space attention must match)."""
    b, t, d = x.shape
    dh = d // n_head

    def heads(y):
        return y.view(b, t, n_head, dh).transpose(1, 2)

    scores = heads(query(x)) @ heads(key(x)).transpose(-1, -2) / dh ** 0.5
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    z = (scores.softmax(-1) @ heads(value(x))).transpose(1, 2).reshape(b, t, d)
    return out(z)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("factored", [False, True])
def test_reduced_attention_full_rank_equals_dense(with_mask, factored):
    d, h = 32, 4
    query, key, value, out = (nn.Linear(d, d) for _ in range(4))
    x = torch.randn(2, 10, d)
    valid = torch.tensor([[True] * 10, [True] * 6 + [False] * 4]) if with_mask else None
    dense = reference_attention(x, query, key, value, out, h, valid)
    if factored:
        frames = x.reshape(-1, d)
        query, key, value, out = (_factored(p, frames if p is not out else torch.randn(500, d), d)
                                  for p in (query, key, value, out))
    reduced = ReducedSelfAttention(query, key, value, out, h)
    got = reduced(x, key_padding_mask=valid)
    diff = (got - dense)[valid] if valid is not None else got - dense
    assert diff.abs().max().item() < 1e-4


def test_reduced_attention_is_cheaper_only_at_small_ranks():
    d, h, t = 384, 6, 1500
    small = [LowRankLinear(d, d, 32) for _ in range(4)]
    large = [LowRankLinear(d, d, 256) for _ in range(4)]
    assert attention_flops(*small, h, t, reduced=True) < attention_flops(*small, h, t, reduced=False)
    assert attention_flops(*large, h, t, reduced=True) > attention_flops(*large, h, t, reduced=False)


def test_rank_larger_than_layer_is_rejected():
    layer = nn.Linear(8, 4)
    stats = _stats_of(layer, torch.randn(50, 8))
    with pytest.raises(ValueError, match="larger than the layer"):
        factor_weights(layer.weight, layer.bias, spectrum(stats), 5)
    with pytest.raises(ValueError, match="rank_pattern"):
        make_plan({"l": spectrum(stats)}, {"l": ("feed_forward", 8, 4)},
                  LowRankConfig(rank_pattern={"l": 9}))


def test_non_finite_activations_are_rejected():
    stats = OutputStats(4)
    with pytest.raises(FloatingPointError, match="non-finite"):
        stats.update(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))


def test_empty_calibration_set_is_rejected():
    layer = nn.Linear(4, 4)
    holder = nn.Sequential(layer)
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate(lambda s, l: holder(s), holder, [], ["0"])


def test_plan_rounds_up_and_keeps_dense_when_no_savings():
    layer = nn.Linear(32, 32)
    spec = spectrum(_stats_of(layer, _correlated_inputs()))
    plan = make_plan({"a": spec, "b": spec}, {"a": ("attention", 32, 32), "b": ("feed_forward", 32, 32)},
                     LowRankConfig(theta_attention=0.9, theta_feed_forward=1.0, rank_multiple=4))
    by_name = {d.name: d for d in plan.decisions}
    assert plan.ranks["a"] % 4 == 0 and plan.ranks["a"] >= by_name["a"].rank_from_theta
    assert "b" not in plan.ranks and by_name["b"].rank is None
