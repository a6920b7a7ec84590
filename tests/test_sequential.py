"""Sequential (block-by-block) calibration on real tiny.en and real speech."""

import pytest
import torch

from espnet_lowrank.api import load_compressed, save_compressed
from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.bin.export_whisper import export_whisper
from espnet_lowrank.compress import compress
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.sequential import block_of


def test_block_of():
    assert block_of("encoders.blocks.3.attn.query") == "encoders.blocks.3"
    assert block_of("encoders.11.feed_forward.w_1") == "encoders.11"


def test_sequential_on_tiny_en(shared_data_dir, tmp_path):
    exp = tmp_path / "dense"
    export_whisper("tiny.en", str(exp))
    dense, train_config = load_asr_model(str(exp / "config.yaml"), str(exp / "model.pth"))
    utts = read_data_dir(str(shared_data_dir / "librispeech_train-clean-100"))[:2]
    kw = dict(theta_attention=0.98, theta_feed_forward=0.995)
    one = compress(dense, utts, LowRankConfig(**kw))
    seq = compress(dense, utts, LowRankConfig(sequential=True, **kw))
    assert seq.report["calibration_passes"] == 4
    # Block 0 sees the dense inputs either way: same ranks there.
    first = {n: r for n, r in one.plan.ranks.items() if n.startswith("encoders.blocks.0.")}
    assert first and first == {n: r for n, r in seq.plan.ranks.items() if n.startswith("encoders.blocks.0.")}
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
