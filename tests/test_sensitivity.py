"""Rank allocation by measured sensitivity (``ranks.budget``),
on real tiny.en and real speech."""

import pytest
import torch

from espnet_lowrank.api import load_compressed, save_compressed
from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.batches import batch_windows
from espnet_lowrank.budget import allocate_ranks, plan_cost
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.pipeline import calibrate_model, compress
from espnet_lowrank.sensitivity import _encoder_output, _projector, measure_sensitivity

BLOCK = "encoders.blocks.1"


def test_measured_error_falls_with_rank_and_vanishes_at_full_rank(dense_exp, librispeech):
    dense, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    utts = librispeech[:1]
    stats = calibrate_model(dense, utts)
    names = [f"{BLOCK}.attn.query", f"{BLOCK}.mlp.0"]
    probes = {n: (spectrum(stats[n]), [16, 96, 384]) for n in names}
    batches = list(batch_windows([utts], batch_size=1))
    errors = measure_sensitivity(dense, batches, probes)
    # The probes reuse the dense outputs of what runs before the layer (earlier
    # blocks; attention before mlp.0): the same numbers as a whole forward per probe.
    modules = dict(dense.encoder.named_modules())
    with torch.no_grad():
        want = _encoder_output(dense, batches[0])
        for n in names:
            handle = modules[n].register_forward_hook(_projector(probes[n][0], 96))
            got = _encoder_output(dense, batches[0])
            handle.remove()
            whole = float((got - want).double().pow(2).sum() / want.double().pow(2).sum())
            assert abs(errors[n][96] - whole) <= 1e-9 * whole, (n, errors[n][96], whole)
    for n in names:
        e = errors[n]
        assert e[16] > e[96] > e[384] >= 0.0, (n, e)
        assert e[384] < 1e-8, (n, e)  # the full basis projects onto itself
        assert e[16] > 1e-4, (n, e)
    # The model is left as it was: same weights, no hooks.
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert not any(m._forward_hooks for m in dense.modules())
    with pytest.raises(ValueError, match="ranks.budget allocates by sensitivity measured on calibration audio"):
        compress(dense, config=LowRankConfig(budget=0.75), stats=stats)
    # The allocator reads the measured errors: at equal budget it still holds.
    layers = {n: ("attention" if "attn" in n else "feed_forward", 384, 384 if "attn" in n else 1536)
              for n in names}
    spectra = {n: probes[n][0] for n in names}
    config = LowRankConfig(rank_multiple=16)
    full = {n: {k: float(k < 384) * (1.0 - k / 384) for k in range(16, 385, 16)} for n in names}
    plan = allocate_ranks(spectra, layers, 0.5, config, measured=full)
    kept, dense_cost = plan_cost(plan)
    assert kept <= 0.5 * dense_cost * (1 + 1e-9)
    assert all("(sensitivity)" in d.reason for d in plan.decisions)


def test_sensitivity_budget_with_sequential_calibration_on_tiny_en(dense_exp, librispeech, tmp_path):
    """Sequential calibration factors each group at the ranks the sensitivity
    allocator chose on the dense model; the source stays as it was and the
    result reloads with exactly its keys."""
    dense, train_config = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    utts = librispeech[:2]
    kw = dict(budget=0.75, rank_multiple=96, batch_size=2)
    one = compress(dense, utts, LowRankConfig(**kw))
    seq = compress(dense, utts, LowRankConfig(sequential=True, **kw))
    assert seq.plan.ranks == one.plan.ranks and seq.plan.ranks
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    kept = seq.report["encoder_linear_params_compressed"] / seq.report["encoder_linear_params_dense"]
    assert 0.6 < kept <= 0.76, kept
    assert "rank_allocation" in seq.report["steps"]
    save_compressed(seq, train_config, str(tmp_path / "seq"), source_config_file=str(dense_exp / "config.yaml"))
    model, _ = load_compressed(str(tmp_path / "seq"))
    assert set(model.state_dict()) == set(seq.model.state_dict())
    speech = 0.1 * torch.randn(1, 16000 * 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = model.encode(speech, torch.tensor([speech.shape[1]]))
        want, _ = seq.model.encode(speech, torch.tensor([speech.shape[1]]))
    assert (got - want).abs().max().item() < 1e-3 * want.abs().max().item()
