"""Hostile surroundings of a run: folders beside the output that it must not
take, a full disk, the permissions of what it writes, hand-edited exp dirs,
and what it says while it works. Each row fails on the code before the fix."""

import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from espnet_lowrank.bin import compress as compress_cli
from espnet_lowrank.jobs import WORK_MARKER, remove_work_dir, work_dir_for
from espnet_lowrank.utils import atomic_output_dir
from cli import run_cli  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
LITEASR = ROOT / "conf" / "lowrank" / "whisper_tiny_liteasr.yaml"


def _noise_dir(path: Path, n: int) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        wav = path / f"u{i}.wav"
        soundfile.write(str(wav), (0.1 * rng.standard_normal(32000)).astype("float32"), 16000)
        lines.append(f"u{i} {wav}\n")
    (path / "wav.scp").write_text("".join(lines))
    return path


def test_a_folder_named_like_the_work_dir_is_never_taken_or_removed(tmp_path):
    out = tmp_path / "exp"
    user = tmp_path / "exp.calib"  # the name the work dir had before
    user.mkdir()
    (user / "model.pth").write_bytes(b"the user's model")
    lookalike = tmp_path / ".exp.calib-abc"  # the new pattern, but not made by this plugin
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")

    work = work_dir_for(str(out))
    assert Path(work).parent == tmp_path and Path(work) not in (user, lookalike)
    assert (Path(work) / WORK_MARKER).read_text().strip() == os.path.realpath(out)
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o777 & ~_umask()
    assert work_dir_for(str(out)) == work  # an unfinished run's parts are found again
    assert work_dir_for(str(tmp_path / "other")) != work  # never another output's

    remove_work_dir(str(lookalike), str(out))
    remove_work_dir(str(user), str(out))
    assert (lookalike / "notes.txt").read_text() == "mine"
    assert (user / "model.pth").read_bytes() == b"the user's model"
    (Path(work) / "stats.1.pt").write_bytes(b"part")
    remove_work_dir(work, str(out), keep=[str(user / "model.pth")])
    assert not Path(work).exists()


@pytest.mark.slow
def test_split_calibration_leaves_a_source_in_output_dot_calib_alone(dense_exp, tmp_path):
    """The reported repro: the source exp dir is OUT.calib, and --nj 2 deleted it."""
    src = tmp_path / "src.calib"
    shutil.copytree(dense_exp, src)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    calib = _noise_dir(tmp_path / "calib", 2)
    config = tmp_path / "batch1.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(LITEASR.read_text()),
                                      "calibration": {"num_calib": 2, "batch_size": 1}}))
    out = tmp_path / "src"
    env = dict(os.environ, ESPNET_LOWRANK_NO_TQDM="1")
    proc = run_cli([sys.executable, "-m", "espnet_lowrank.bin.compress",
                    "--asr_train_config", src / "config.yaml", "--asr_model_file", src / "model.pth",
                    "--calib_data", calib, "--lowrank_config", config, "--nj", "2",
                    "--output_dir", out], env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    assert (out / "model.pth").is_file()
    assert not list(tmp_path.glob(".src.calib-*"))  # the run's own work dir is gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_exp_dirs_get_the_mode_mkdir_gives(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(str(tmp_path / "exp")) as tmp:
            Path(tmp, "model.pth").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "exp").st_mode) == 0o755


_FULL_DISK = """
import resource, sys, torch
from espnet_lowrank.utils import atomic_output_dir, atomic_write
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # as `ulimit -f 1024`
how, out = sys.argv[1], sys.argv[2]
big = {"w": torch.zeros(1 << 20)}
if how == "dir":
    with atomic_output_dir(out) as tmp:
        torch.save(big, tmp + "/model.pth")
else:
    atomic_write(out, lambda tmp: torch.save(big, tmp))
"""


@pytest.mark.parametrize("how", ["dir", "file"])
def test_a_full_disk_is_one_line_naming_the_output(how, tmp_path):
    out = tmp_path / ("exp" if how == "dir" else "stats.pt")
    proc = run_cli([sys.executable, "-c", _FULL_DISK, how, out], check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("espnet_lowrank.utils.OutputWriteError: cannot write"), proc.stderr[-2000:]
    assert str(out) in last and "no space left" in last, last
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def _lowrank_exp(dense_exp: Path, exp: Path, plan: dict) -> Path:
    from espnet_lowrank.artifact import lowrank_train_config, read_yaml

    exp.mkdir()
    config = lowrank_train_config(read_yaml(str(dense_exp / "config.yaml")), {"plan": {}, "attention": "dense"})
    config["encoder_conf"]["plan"] = plan
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    return exp


@pytest.mark.parametrize("plan, message", [
    ({"encoders.blocks.0.mlp.0": "64"}, r"plan\[encoders.blocks.0.mlp.0\]: expected a positive integer, "
                                        r"got the string '64'"),
    ({"encoders.blocks.0.mlp.0": 0}, r"plan\[encoders.blocks.0.mlp.0\]: expected a positive integer, got 0"),
    (["encoders.blocks.0.mlp.0"], r"plan: expected a mapping"),
])
def test_a_hand_edited_plan_is_refused_in_one_line(plan, message, dense_exp, tmp_path):
    from espnet_lowrank.artifact import build_asr_model, read_yaml

    exp = _lowrank_exp(dense_exp, tmp_path / "exp", plan)
    with pytest.raises(ValueError, match=message):
        build_asr_model(read_yaml(str(exp / "config.yaml")))


def test_fewer_utterances_than_num_calib_is_logged(dense_exp, tmp_path, caplog):
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import calibrate_model

    model, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    calib = _noise_dir(tmp_path / "calib", 1)
    config = LowRankConfig(num_calib=5, target_modules=r"encoders\.blocks\.0\.mlp\.0")
    with caplog.at_level("WARNING"):
        calibrate_model(model, str(calib), config)
    assert "num_calib is 5, but the calibration data holds 1 utterances: using 1" in caplog.text


@pytest.mark.parametrize("kind", ["fifo", "directory", "empty"])
def test_a_lowrank_config_that_is_no_yaml_file_fails_before_the_model_loads(kind, dense_exp, tmp_path, capsys):
    path = tmp_path / "lowrank.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("")
    calib = _noise_dir(tmp_path / "calib", 1)

    def hung(*_):
        raise TimeoutError("reading the low-rank config hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a FIFO opened for reading blocks until a writer comes
    try:
            status = compress_cli.cli(["--asr_train_config", str(dense_exp / "config.yaml"), "--asr_model_file",
                                   str(dense_exp / "model.pth"), "--calib_data", str(calib),
                                   "--lowrank_config", str(path), "--output_dir", str(tmp_path / "out")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    assert ("is empty" if kind == "empty" else "not a regular file") in err[0], err
    assert not (tmp_path / "out").exists()



def test_every_long_step_before_recovery_shows_progress(dense_exp, tmp_path, monkeypatch):
    """The dense teacher's pass and the first full loss ran for minutes with nothing printed."""
    from espnet_lowrank import recovery
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import compress

    bars = []

    def recorded(iterable=None, **kwargs):
        bars.append(kwargs["desc"])
        return iterable

    monkeypatch.setattr(recovery, "progress", recorded)
    model, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    config = LowRankConfig(target_modules=r"encoders\.blocks\.0\.mlp\.0", recovery_steps=1)
    compress(model, str(_noise_dir(tmp_path / "calib", 1)), config)
    assert bars[:3] == ["recovery: dense teacher", "recovery: loss on every batch", "recovery"], bars


def test_whisper_calibration_reads_only_the_30_s_it_uses(dense_exp, tmp_path, monkeypatch, caplog):
    """A 2-hour file held 3 GB: calibration now reads no more than Whisper's window."""
    from espnet_lowrank import batches
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import calibrate_model

    calib = tmp_path / "calib"
    calib.mkdir()
    soundfile.write(str(calib / "long.wav"), (0.1 * np.random.default_rng(0).standard_normal(45 * 16000))
                    .astype("float32"), 16000)
    (calib / "wav.scp").write_text(f"long {calib / 'long.wav'}\n")
    asked = []
    load = batches.load_audio
    monkeypatch.setattr(batches, "load_audio", lambda path, sr=16000, max_seconds=None:
                        asked.append(max_seconds) or load(path, sr, max_seconds))
    model, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    with caplog.at_level("WARNING"):
        calibrate_model(model, str(calib), LowRankConfig(target_modules=r"encoders\.blocks\.0\.mlp\.0"))
    assert asked == [30.0], asked
    assert "1 of 1 calibration utterances are longer than 30 s" in caplog.text
