"""The shipped, trained ESPnet Conformer (recipes/conformer/asr1/exp/asr_train_asr_conformer):
it recognizes real speech through the stock ``espnet2.bin.asr_inference``, compresses with
the recipe's best method, reloads with exactly the expected keys, refuses a model.pth
whose keys do not fit, and decodes with int8, reduced attention and both.

Everything runs from the recipe dir, as ESPnet recipes do (config.yaml's paths are
relative to it). Audio: held-out ARCTIC cathy prompts (a0560-a0593, never trained on)
and training prompts for calibration, from ../shared/data.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from espnet_lowrank.data import read_data_dir, write_data_dir
from espnet_lowrank.scoring import read_text_file, score_texts
from cli import run_cli, tool_env  # tests/ is on sys.path
from test_conformer_recipe import SHIPPED_EXP, SHIPPED_FILES  # tests/ is on sys.path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "conformer" / "asr1"
EXP = SHIPPED_EXP  # relative to RECIPE
BEST = RECIPE / "conf" / "lowrank" / "best.yaml"
NUM_TEST = 12

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cathy(shared_data_dir, tmp_path_factory):
    """(held-out test dir, calibration dir): absolute wav paths, so any cwd works."""
    utts = read_data_dir(str(shared_data_dir / "arctic_cathy_a"), require_text=True)
    heldout = [u for u in utts if u.utt_id.startswith(("cathy_arctic_a056", "cathy_arctic_a057",
                                                          "cathy_arctic_a058", "cathy_arctic_a059"))]
    train = [u for u in utts if u.utt_id < "cathy_arctic_a0500"]
    root = tmp_path_factory.mktemp("cathy")
    write_data_dir(str(root / "test"), heldout[::max(1, len(heldout) // NUM_TEST)][:NUM_TEST])
    write_data_dir(str(root / "calib"), train[::max(1, len(train) // 16)][:16])
    return root / "test", root / "calib"


def _decode(exp: Path, data: Path, out: Path, ok=True, config: Path = EXP / "decode.yaml"):
    """Stock ESPnet decoding (no plugin wrapper: the installed import hook registers it);
    ``config`` defaults to the shipped decode.yaml (CTC prefix search + the shipped LM)."""
    return run_cli([sys.executable, "-m", "espnet2.bin.asr_inference", "--ngpu", "0", "--batch_size", "1",
                    "--data_path_and_name_and_type", f"{data / 'wav.scp'},speech,sound",
                    "--asr_train_config", exp / "config.yaml", "--asr_model_file", exp / "model.pth",
                    "--config", config, "--output_dir", out],
                   cwd=RECIPE, env=tool_env(), timeout=600, check=ok)


def _wer(data: Path, out: Path):
    return score_texts(read_text_file(str(data / "text")),
                       read_text_file(str(out / "1best_recog" / "text")), normalize="basic")


@pytest.fixture(scope="module")
def dense_wer(cathy, tmp_path_factory):
    test, _ = cathy
    out = tmp_path_factory.mktemp("decode") / "dense"
    _decode(EXP, test, out)
    return _wer(test, out)


def test_shipped_exp_dir_is_complete_and_small():
    for name in SHIPPED_FILES:
        path = RECIPE / EXP / name
        assert path.is_file() and not path.is_symlink(), path
    assert (RECIPE / EXP / "model.pth").stat().st_size <= 30 * 2**20
    config = yaml.safe_load((RECIPE / EXP / "config.yaml").read_text())
    assert config["encoder"] == "conformer"
    for path in (config["bpemodel"], config["normalize_conf"]["stats_file"]):
        assert not os.path.isabs(path) and (RECIPE / path).is_file(), path


def test_dense_model_recognizes_held_out_speech(dense_wer):
    # With the shipped LM: 55.6% on these 12 (2026-12-07; 63.6% without it; the undertrained
    # model it replaced: ~90%). The recipe's 30% target is not met: its README says why.
    assert dense_wer.snt == NUM_TEST and dense_wer.err <= 60.0, dense_wer


def test_shipped_lm_lowers_wer_on_unseen_sentences(cathy, dense_wer, tmp_path):
    """decode.yaml fuses the shipped LSTM LM (never trained on a0560-a0593); the same
    prefix search without it (conf/decode_asr.yaml) gets more words wrong: 63.6 against
    55.6% on these 12 (2026-12-07)."""
    test, _ = cathy
    _decode(EXP, test, tmp_path / "out", config=Path("conf") / "decode_asr.yaml")
    no_lm = _wer(test, tmp_path / "out")
    assert no_lm.snt == NUM_TEST and dense_wer.err < no_lm.err - 5.0, (dense_wer, no_lm)


@pytest.fixture(scope="module")
def compressed(cathy, tmp_path_factory):
    """The recipe's best config at test scale (16 utterances, 20 recovery steps), by the CLI."""
    _, calib = cathy
    root = tmp_path_factory.mktemp("lowrank")
    config = yaml.safe_load(BEST.read_text())
    config.setdefault("recovery", {})["steps"] = 20
    config.setdefault("calibration", {})["num_calib"] = 16
    (root / "best_small.yaml").write_text(yaml.safe_dump(config))
    before = _sha(RECIPE / EXP / "model.pth")
    run_cli([sys.executable, "-m", "espnet_lowrank.bin.compress", "--asr_train_config", EXP / "config.yaml",
             "--asr_model_file", EXP / "model.pth", "--lowrank_config", root / "best_small.yaml",
             "--calib_data", calib, "--output_dir", root / "exp"],
            cwd=RECIPE, env=tool_env(), timeout=600)
    assert _sha(RECIPE / EXP / "model.pth") == before  # the source is only read
    return root / "exp"


def test_compressed_reloads_with_exact_keys(compressed):
    from espnet2.tasks.asr import ASRTask

    from espnet_lowrank.espnet.registry import register

    register()
    report = json.loads((compressed / "report.json").read_text())
    assert report["recovery_scope"] == "block"
    assert [b["block"] for b in report["recovery_blocks"]] == list(range(8))
    assert all(b["loss_after"] < b["loss_before"] for b in report["recovery_blocks"]), report
    assert report["recovery_loss_after"] < report["recovery_loss_before"], report
    assert report["encoder_linear_params_compressed"] <= 0.62 * report["encoder_linear_params_dense"]
    cwd = os.getcwd()
    os.chdir(RECIPE)
    try:
        model, _ = ASRTask.build_model_from_file(str(compressed / "config.yaml"),
                                                 str(compressed / "model.pth"), "cpu")
        dense, _ = ASRTask.build_model_from_file(str(EXP / "config.yaml"), str(EXP / "model.pth"), "cpu")
    finally:
        os.chdir(cwd)
    saved = torch.load(compressed / "model.pth", map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(saved)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    dense_state = dense.state_dict()
    for key, value in saved.items():
        if not key.startswith("encoder."):
            assert torch.equal(value, dense_state[key]), key


def test_compressed_decodes_close_to_dense(compressed, cathy, dense_wer, tmp_path):
    test, _ = cathy
    _decode(compressed, test, tmp_path / "out")
    got = _wer(test, tmp_path / "out")
    # Test scale (16 calibration utterances, 20 steps); RESULTS.md has the full-scale rows.
    assert got.err <= dense_wer.err + 15.0, (got, dense_wer)


def test_dense_model_pth_in_a_compressed_exp_is_refused(compressed, cathy, tmp_path):
    test, _ = cathy
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("config.yaml",):
        (wrong / name).write_bytes((compressed / name).read_bytes())
    (wrong / "model.pth").write_bytes((RECIPE / EXP / "model.pth").read_bytes())
    proc = _decode(wrong, test, tmp_path / "out", ok=False)
    assert proc.returncode != 0
    assert "missing" in proc.stderr or "unexpected" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "1best_recog" / "text").exists()


@pytest.mark.parametrize("deployment", [{"int8": True}, {"attention": "reduced"},
                                        {"int8": True, "attention": "reduced"}],
                         ids=["int8", "reduced", "int8+reduced"])
def test_int8_and_reduced_attention_decode(deployment, cathy, dense_wer, tmp_path):
    test, calib = cathy
    config = yaml.safe_load(BEST.read_text())
    config["recovery"] = {"steps": 0}
    config["deployment"] = dict(config.get("deployment", {}), **deployment)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run_cli([sys.executable, "-m", "espnet_lowrank.bin.compress", "--asr_train_config", EXP / "config.yaml",
             "--asr_model_file", EXP / "model.pth", "--lowrank_config", tmp_path / "c.yaml",
             "--calib_data", calib, "--output_dir", tmp_path / "exp"],
            cwd=RECIPE, env=tool_env(), timeout=600)
    report = json.loads((tmp_path / "exp" / "report.json").read_text())
    if deployment.get("attention") == "reduced":
        assert set(report["attention"].values()) == {"reduced"}, report["attention"]
    _decode(tmp_path / "exp", test, tmp_path / "out")
    got = _wer(test, tmp_path / "out")
    assert got.snt == NUM_TEST and got.err <= dense_wer.err + 25.0, (got, dense_wer)


def test_ctc_objective_on_the_shipped_conformer(cathy, monkeypatch):
    """End-to-end recovery on what the CTC decoder reads (KL to the dense CTC
    posteriors, conf/lowrank/recovery_ctc.yaml): the loss falls, the source stays."""
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import compress

    monkeypatch.chdir(RECIPE)
    dense, _ = load_asr_model(str(EXP / "config.yaml"), str(EXP / "model.pth"))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    config = LowRankConfig(theta_attention=0.95, theta_feed_forward=0.97, batch_size=2, num_calib=4,
                           recovery={"steps": 4, "lr": 1e-4, "objective": "decoder"})
    report = compress(dense, str(cathy[1]), config).report
    assert report["recovery_objective"] == "decoder"
    assert report["recovery_loss_after"] < report["recovery_loss_before"], report
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
