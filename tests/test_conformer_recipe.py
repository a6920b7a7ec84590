"""recipes/conformer/asr1/run.sh --tiny true, stages 1 -> 13, in a temporary copy of
the recipe (nothing is written into the repo), plus: stage 12 gives the same plan,
weights and hypotheses with --nj 1 and --nj 4; bad input fails fast, before any work.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


SHIPPED_EXP = Path("exp") / "asr_train_asr_conformer"
SHIPPED_FILES = ("config.yaml", "model.pth", "bpe.model", "feats_stats.npz", "decode.yaml", "train_summary.md")
SHIPPED_LM = Path("exp") / "lm_train_lm_sd_ft"  # the LM that SHIPPED_EXP's decode.yaml fuses
SHIPPED_LM_FILES = ("config.yaml", "model.pth", "bpe.model", "train_summary.md")


def _copy_recipe(dst: Path, shipped: bool = False) -> Path:
    """recipes/common, recipes/conformer/asr1 (no data/exp/dump) and conf/lowrank, as a
    fresh clone has them; ``shipped``: plus the committed files of the trained Conformer and its LM."""
    ignore = shutil.ignore_patterns("data", "exp", "dump", "RESULTS.md", "__pycache__")
    shutil.copytree(ROOT / "recipes" / "common", dst / "recipes" / "common")
    recipe = dst / "recipes" / "conformer" / "asr1"
    shutil.copytree(ROOT / "recipes" / "conformer" / "asr1", recipe, ignore=ignore)
    shutil.copytree(ROOT / "conf" / "lowrank", dst / "conf" / "lowrank")
    if shipped:
        for exp, names in ((SHIPPED_EXP, SHIPPED_FILES), (SHIPPED_LM, SHIPPED_LM_FILES)):
            (recipe / exp).mkdir(parents=True)
            for name in names:
                shutil.copyfile(ROOT / "recipes" / "conformer" / "asr1" / exp / name, recipe / exp / name)
    return recipe


def shipped_stage12_inputs(shared: Path, root: Path):
    """(calibration dir: 16 AN4 training utterances, test dir: 3 held-out ARCTIC cathy
    prompts), absolute Kaldi dirs outside the recipe."""
    from espnet_lowrank.data import read_data_dir, write_data_dir

    calib = read_data_dir(str(shared / "an4"), require_text=True)[:16]
    test = [u for u in read_data_dir(str(shared / "arctic_cathy_a"), require_text=True)
            if u.utt_id.startswith("cathy_arctic_a059")][:3]
    write_data_dir(str(root / "calib"), calib)
    write_data_dir(str(root / "heldout"), test)
    return root / "calib", root / "heldout"


def _run(recipe: Path, *args: str, shared: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               ESPNET_LOWRANK_SHARED_DATA=str(shared), ESPNET_LOWRANK_NO_TQDM="1")
    proc = subprocess.Popen(["bash", str(recipe / "run.sh"), *args], cwd=recipe, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the recipe's jobs too
        out, err = proc.communicate()
        pytest.fail(f"run.sh {' '.join(args)} ran past {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _lowrank_state(recipe: Path):
    exp = recipe / "exp" / "asr_train_tiny_lowrank"
    plan = yaml.safe_load((exp / "config.yaml").read_text())["encoder_conf"]["plan"]
    state = torch.load(exp / "model.pth", map_location="cpu")
    hyps = {p.parent.parent.name: p.read_text() for p in exp.glob("decode_*/1best_recog/text")}
    return plan, state, hyps


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory, shared_data_dir):
    recipe = _copy_recipe(tmp_path_factory.mktemp("recipe"))
    proc = _run(recipe, "--tiny", "true", "--nj", "1", shared=shared_data_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return recipe


def test_tiny_recipe_stages_1_to_13(tiny_recipe):
    results = (tiny_recipe / "exp" / "RESULTS.md").read_text()
    for row in ("| asr_train_tiny |", "| asr_train_tiny_lowrank |",
                "asr_train_tiny/decode_test_synth", "asr_train_tiny_lowrank/decode_test_real"):
        assert row in results, results
    assert (tiny_recipe / "exp" / "wer_vs_size.png").is_file()
    # end-to-end decoding time and RTF from stage 12's asr_inference logs, for both models
    lines = results.splitlines()
    header = [c.strip() for c in next(x for x in lines if x.startswith("| model |")).split("|")]
    for name in ("asr_train_tiny", "asr_train_tiny_lowrank"):
        row = [c.strip() for c in next(x for x in lines if x.startswith(f"| {name} |")).split("|")]
        assert float(row[header.index("decode time (s)")]) > 0 and float(row[header.index("RTF")]) > 0, row
    dense = tiny_recipe / "exp" / "asr_train_tiny"
    assert (dense / "config.yaml").is_file() and (dense / "model.pth").is_file()
    report = json.loads((tiny_recipe / "exp" / "asr_train_tiny_lowrank" / "report.json").read_text())
    assert report  # written by compress
    # Test sets never leak into training or calibration.
    train = set(line.split()[0] for line in (tiny_recipe / "dump/raw/train/text").read_text().splitlines())
    calib = set(line.split()[0] for line in (tiny_recipe / "exp/asr_train_tiny_calib/wav.scp").read_text().splitlines())
    assert calib <= train
    for test_set in ("test_synth", "test_real"):
        ids = set(line.split()[0] for line in (tiny_recipe / "data" / test_set / "text").read_text().splitlines())
        assert ids and not ids & train
        hyp_ids = set(line.split()[0] for line in
                      (tiny_recipe / f"exp/asr_train_tiny_lowrank/decode_{test_set}/1best_recog/text").read_text().splitlines())
        assert hyp_ids == ids


def test_stage12_same_result_with_nj_1_and_4(tiny_recipe, shared_data_dir):
    plan1, state1, hyps1 = _lowrank_state(tiny_recipe)
    proc = _run(tiny_recipe, "--tiny", "true", "--stage", "12", "--stop_stage", "12", "--nj", "4",
                "--decode_dense", "false", "--test_sets", "test_real", shared=shared_data_dir)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "in 4 jobs" in proc.stderr
    assert len(list((tiny_recipe / "exp/asr_train_tiny_calib/split4").iterdir())) == 4
    plan4, state4, hyps4 = _lowrank_state(tiny_recipe)
    assert plan1 == plan4
    assert any(rank for rank in plan1.values())
    assert state1.keys() == state4.keys()
    for key in state1:
        torch.testing.assert_close(state1[key], state4[key], rtol=1e-5, atol=1e-6, msg=key)
    assert set(hyps1) == {"decode_test_synth", "decode_test_real"}
    assert set(hyps4) == {"decode_test_real"}  # compress --overwrite replaced the exp dir
    assert hyps1["decode_test_real"] == hyps4["decode_test_real"]


# ---------------------------------------------------------------- bad input: fail fast
def _assert_fails_fast(proc, recipe: Path, *phrases: str):
    assert proc.returncode != 0
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr[-3000:]
    # No work was started: no formatted data, no training, no synthesized speech.
    assert not (recipe / "dump").exists() and not (recipe / "exp").exists()
    assert not (recipe / "data" / "local").exists()


def test_missing_data_dir_fails_fast(tmp_path, shared_data_dir):
    recipe = _copy_recipe(tmp_path)
    missing = tmp_path / "no_such_corpus"
    proc = _run(recipe, "--tiny", "true", "--train_data", str(missing), shared=shared_data_dir,
                timeout=120)
    _assert_fails_fast(proc, recipe, "data directory not found", str(missing))
    # A missing test set, and a missing training dir for a run that starts at stage 2.
    proc = _run(recipe, "--tiny", "true", "--test_sets", str(missing), shared=shared_data_dir, timeout=120)
    _assert_fails_fast(proc, recipe, "bad test set", str(missing))
    proc = _run(recipe, "--tiny", "true", "--stage", "2", shared=shared_data_dir, timeout=120)
    _assert_fails_fast(proc, recipe, "data/train", "run stage 1 first?")


def test_wav_scp_with_missing_audio_fails_fast(tmp_path, shared_data_dir):
    recipe = _copy_recipe(tmp_path)
    bad = tmp_path / "bad_set"
    bad.mkdir()
    (bad / "wav.scp").write_text(f"u1 {shared_data_dir}/an4/audio/missing.flac\nu2 audio/gone.flac\n")
    (bad / "text").write_text("u1 HELLO\nu2 WORLD\n")
    proc = _run(recipe, "--tiny", "true", "--train_data", str(bad), shared=shared_data_dir,
                timeout=120)
    _assert_fails_fast(proc, recipe, "2 of 2 audio files are missing", "missing.flac")


def test_unknown_encoder_family_fails_fast(tmp_path, shared_data_dir):
    recipe = _copy_recipe(tmp_path)
    config = yaml.safe_load((recipe / "conf" / "train_tiny.yaml").read_text())
    config["encoder"] = "rnn"
    config["encoder_conf"] = {"output_size": 64, "hidden_size": 64, "num_layers": 1}
    bad = recipe / "conf" / "train_rnn.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = _run(recipe, "--tiny", "true", "--asr_config", str(bad), shared=shared_data_dir, timeout=120)
    _assert_fails_fast(proc, recipe, "no low-rank adapter", "unknown encoder family", "'rnn'")


def test_fresh_clone_runs_stages_12_13_from_the_shipped_model(shipped_conformer_run, shared_data_dir):
    """No stage 1-11: the committed Conformer, an absolute test dir, --calib_data
    (the run itself is the session fixture ``shipped_conformer_run``)."""
    run = shipped_conformer_run
    recipe, heldout = run.recipe, run.heldout
    results = (recipe / "RESULTS.md").read_text()
    for row in ("| asr_train_asr_conformer |", "| asr_train_asr_conformer_lowrank |",
                "asr_train_asr_conformer/decode_heldout", "asr_train_asr_conformer_lowrank/decode_heldout"):
        assert row in results, results
    calib_ids = {line.split()[0] for line in (recipe / "exp/asr_train_asr_conformer_calib/wav.scp").read_text().splitlines()}
    assert len(calib_ids) == 16 and not calib_ids & {line.split()[0] for line in (heldout / "text").read_text().splitlines()}
    assert (recipe / SHIPPED_EXP / "model.pth").read_bytes() == run.source_bytes
    # Without --calib_data and without stages 1-2 there is nothing to calibrate on: one line, early.
    proc = _run(recipe, "--stage", "12", "--stop_stage", "12", "--test_sets", str(heldout),
                shared=shared_data_dir, timeout=120)
    assert proc.returncode != 0 and "no calibration speech at dump/raw/train" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- speaker-dependent setup
def test_speaker_setup_holds_out_whole_prompts(tmp_path, shared_data_dir):
    """run.sh --setup speaker, stages 1-3 on a few ARCTIC takes: every take of a dev/test
    prompt (and any training take with a held-out transcript) stays out of training; speed
    perturbation adds sp0.9-/sp1.1- copies 1/0.9 and 1/1.1 times as long."""
    import soundfile as sf

    from espnet_lowrank.data import Utterance, read_data_dir, write_data_dir

    src = read_data_dir(str(shared_data_dir / "arctic_cathy_a"), require_text=True)
    keep = [u for u in src if u.utt_id.split("_")[2] in ("a0001", "a0002", "a0525", "a0561", "a0593")]
    test_take = next(u for u in keep if "_a0561_" in u.utt_id)
    # A training-range prompt id reading a test sentence: dropped from train by its text.
    keep.append(Utterance("cathy_arctic_a0003_1", test_take.wav_path, test_take.text, "cathy"))
    shared = tmp_path / "shared"
    write_data_dir(str(shared / "arctic_cathy_a"), keep)
    recipe = _copy_recipe(tmp_path / "repo")
    proc = _run(recipe, "--setup", "speaker", "--stage", "1", "--stop_stage", "3", shared=shared, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def prompts(d):
        return {u.utt_id: int(u.utt_id.split("_a")[-1][:4]) for u in read_data_dir(str(recipe / d), require_text=True)}

    train, dev, test = prompts("data/sd/train"), prompts("data/sd/dev"), prompts("data/sd/test_real_seen")
    assert set(train.values()) == {1, 2}
    assert set(dev.values()) == {525} and set(test.values()) == {561, 593}
    n_takes = lambda p: sum(f"_a{p:04d}_" in u.utt_id for u in keep)  # noqa: E731
    assert len(dev) == n_takes(525) and len(test) == n_takes(561) + n_takes(593)
    assert "1 training takes dropped" in proc.stderr
    sp = {u.utt_id: u for u in read_data_dir(str(recipe / "dump/sd/raw/train_sp"), require_text=True)}
    assert len(sp) == 3 * len(train)
    for uid in train:
        n = sf.info(sp[uid].wav_path).frames
        for f in (0.9, 1.1):
            assert sp[f"sp{f:g}-{uid}"].text == sp[uid].text
            assert abs(sf.info(sp[f"sp{f:g}-{uid}"].wav_path).frames - n / f) < 0.01 * n
