"""Sequential (layer-group by layer-group) calibration and the short
recovery, on real tiny.en and real speech."""

import pytest
import torch

from espnet_lowrank.api import load_compressed, save_compressed
from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.bin.export_whisper import export_whisper
from espnet_lowrank.pipeline import calibrate_model, compress
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir


def test_sequential_on_tiny_en(shared_data_dir, tmp_path):
    exp = tmp_path / "dense"
    export_whisper("tiny.en", str(exp))
    dense, train_config = load_asr_model(str(exp / "config.yaml"), str(exp / "model.pth"))
    utts = read_data_dir(str(shared_data_dir / "librispeech_train-clean-100"))[:2]
    kw = dict(theta_attention=0.98, theta_feed_forward=0.995)
    one = compress(dense, utts, LowRankConfig(**kw))
    seq = compress(dense, utts, LowRankConfig(sequential=True, **kw))
    # Groups in forward order: q/k/v (one input), out, mlp.0, mlp.2 for each of 4 blocks.
    assert seq.report["calibration_passes"] == 16
    # The first group sees the dense inputs either way: same ranks there.
    qkv = [f"encoders.blocks.0.attn.{p}" for p in ("query", "key", "value")]
    assert {n: one.plan.ranks.get(n) for n in qkv} == {n: seq.plan.ranks.get(n) for n in qkv}
    assert set(seq.plan.ranks) and seq.report["encoder_linear_params_compressed"] < seq.report["encoder_linear_params_dense"]
    with pytest.raises(ValueError, match="budget"):
        compress(dense, utts, LowRankConfig(sequential=True, budget=0.75))
    save_compressed(seq, train_config, str(tmp_path / "seq"), source_config_file=str(exp / "config.yaml"))
    model, _ = load_compressed(str(tmp_path / "seq"))
    speech = 0.1 * torch.randn(1, 16000 * 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = model.encode(speech, torch.tensor([speech.shape[1]]))
        want, _ = seq.model.encode(speech, torch.tensor([speech.shape[1]]))
    assert (got - want).abs().max().item() < 1e-3 * want.abs().max().item()


def test_recovery_lowers_the_distillation_loss(shared_data_dir, tmp_path):
    exp = tmp_path / "dense"
    export_whisper("tiny.en", str(exp))
    dense, _ = load_asr_model(str(exp / "config.yaml"), str(exp / "model.pth"))
    utts = read_data_dir(str(shared_data_dir / "librispeech_train-clean-100"))[:2]
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    result = compress(dense, utts, LowRankConfig(theta_attention=0.95, theta_feed_forward=0.98,
                                                 recovery_steps=4, recovery_lr=3e-4, batch_size=2))
    report = result.report
    assert report["recovery_steps"] == 4
    assert report["recovery_mse_after"] < 0.95 * report["recovery_mse_before"], report
    # Only the factors trained; the source model is untouched.
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    dense_keys = {k for k in result.model.state_dict() if ".down." not in k and ".up." not in k}
    for k in dense_keys:
        if k in before:
            assert torch.equal(before[k], result.model.state_dict()[k]), k
    # A diverging LR never makes things worse: the calibration factors are kept.
    kw = dict(theta_attention=0.95, theta_feed_forward=0.98, batch_size=2)
    plain = compress(dense, utts, LowRankConfig(**kw)).model.state_dict()
    diverged = compress(dense, utts, LowRankConfig(recovery_steps=2, recovery_lr=1.0, **kw))
    assert diverged.report["recovery_best_step"] == 0, diverged.report
    assert diverged.report["recovery_mse_after"] == diverged.report["recovery_mse_before"]
    got = diverged.model.state_dict()
    assert set(got) == set(plain)
    assert max((got[k] - plain[k]).abs().max().item() for k in plain) == 0.0
    with pytest.raises(ValueError, match="calibration audio"):
        compress(dense, config=LowRankConfig(recovery_steps=2),
                 stats=calibrate_model(dense, utts[:1]))
