"""Bad input, one row per case: ``espnet_lowrank.bin.compress`` exits non-zero
with one line that names the problem, leaves nothing in the output dir, and
never changes the source model's bytes. Real Whisper tiny.en weights."""

import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_lowrank.audio import check_calibration_audio, load_audio
from espnet_lowrank.bin import compress as compress_cli
from espnet_lowrank.data import read_data_dir

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _noise(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (int(seconds * sr), channels) if channels > 1 else (int(seconds * sr),)
    return (0.1 * rng.standard_normal(shape)).astype("float32")


def _data_dir(path: Path, audio: dict) -> Path:
    """A Kaldi dir with one wav per entry (name -> array, or name -> raw bytes)."""
    path.mkdir(parents=True)
    lines = []
    for name, data in audio.items():
        wav = path / f"{name}.wav"
        if isinstance(data, bytes):
            wav.write_bytes(data)
        else:
            soundfile.write(str(wav), data, SR, subtype="FLOAT")
        lines.append(f"{name} {wav}\n")
    (path / "wav.scp").write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def noise_calib(tmp_path_factory):
    return _data_dir(tmp_path_factory.mktemp("data") / "calib", {"u1": _noise(2.0)})


def _truncated_wav(tmp: Path) -> bytes:
    path = tmp / "full.wav"
    soundfile.write(str(path), _noise(1.0), SR, subtype="PCM_16")
    return path.read_bytes()[:30]  # cut inside the header


def _nan_wav() -> np.ndarray:
    audio = _noise(1.0)
    audio[100] = np.nan
    return audio


# id -> (calib audio, message regex)
AUDIO_ROWS = {
    "corrupt": (lambda tmp: {"u1": b"RIFF not really a wav file"}, r"cannot read audio file .*u1\.wav"),
    "truncated": (lambda tmp: {"u1": _truncated_wav(tmp)}, r"u1\.wav"),
    "zero_length": (lambda tmp: {"u1": np.zeros(0, dtype="float32")}, r"u1\.wav is empty"),
    "silent": (lambda tmp: {"u1": np.zeros(SR * 2, dtype="float32")}, r"only 0\.000 s of non-silent audio"),
    "too_short": (lambda tmp: {"u1": _noise(0.0005)}, r"only 0\.00\d s of non-silent audio"),
    "nan": (lambda tmp: {"u1": _nan_wav()}, r"u1\.wav contains non-finite samples"),
}

# id -> (YAML text, message regex)
CONFIG_ROWS = {
    "yaml_list": ("- theta_attention: 0.9\n", r"expected .*mapping"),
    "not_utf8": (b"theta_attention: 0.9 # \xff\xfe\n", r"not UTF-8"),
    "wrong_type_lr": ("recovery_lr: 1e-4\n", r"recovery_lr"),
    "wrong_type_int8": ("int8: 'no'\n", r"int8"),
    "wrong_type_theta": ("theta_attention: '0.9'\n", r"theta_attention"),
    "unknown_key": ("theta_atention: 0.9\n", r"unknown .*theta_atention"),
    "theta_zero": ("theta_attention: 0.0\n", r"theta_attention"),
    "theta_above_one": ("theta_feed_forward: 1.5\n", r"theta_feed_forward"),
    "rank_too_large": ("rank_pattern: {'encoders\\.blocks\\.0\\.mlp\\.0': 4096}\n", r"max rank 384"),
    "pattern_matches_nothing": ("exclude_modules: ['encoders\\.blocks\\.99\\..*']\n", r"matches no encoder module"),
    "targets_match_nothing": ("target_modules: 'nothing\\.here'\n", r"no whisper layers matched"),
    "negative_lr": ("recovery_steps: 1\nrecovery_lr: -1.0e-4\n", r"recovery_lr"),
    "huge_lr": ("recovery_steps: 1\nrecovery_lr: 1.0e+3\n", r"recovery_lr"),
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\n"
                   + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
                   + "target_modules: *i\n", r"aliases expand to more than 10000 values"),
    "long_value": ("target_modules: [" + ", ".join(["x" * 40] * 5000) + "]\n", r"^.{0,500}$"),
    "empty": ("# nothing\n", r"is empty"),
}


class TestCompressRefuses:
    """Rows that must fail before the expensive work, in-process."""

    def _check(self, capsys, dense_exp, argv, message, out):
        before = {p.name: _digest(p) for p in sorted(dense_exp.iterdir()) if p.is_file()}
        capsys.readouterr()
        started = time.perf_counter()
        status = compress_cli.cli(argv)
        seconds = time.perf_counter() - started
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert status == 1, err
        assert len(errors) == 1 and "Traceback" not in err, err
        assert __import__("re").search(message, errors[0]), errors[0]
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
        assert not list(out.parent.glob(".tmp-*"))
        after = {p.name: _digest(p) for p in sorted(dense_exp.iterdir()) if p.is_file()}
        assert after == before
        # refused before calibration: never the minutes a compression takes
        assert seconds < 30, seconds

    def _argv(self, exp, calib, out, *extra):
        return ["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "model.pth"),
                "--calib_data", str(calib), "--output_dir", str(out), *extra]

    @pytest.mark.parametrize("row", sorted(AUDIO_ROWS))
    def test_audio(self, row, capsys, dense_exp, tmp_path):
        make, message = AUDIO_ROWS[row]
        calib = _data_dir(tmp_path / "calib", make(tmp_path))
        out = tmp_path / "out"
        self._check(capsys, dense_exp, self._argv(dense_exp, calib, out), message, out)

    @pytest.mark.parametrize("row", sorted(CONFIG_ROWS))
    def test_config(self, row, capsys, dense_exp, noise_calib, tmp_path):
        text, message = CONFIG_ROWS[row]
        config = tmp_path / "lowrank.yaml"
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
        out = tmp_path / "out"
        argv = self._argv(dense_exp, noise_calib, out, "--lowrank_config", str(config))
        self._check(capsys, dense_exp, argv, message, out)

    def test_missing_model_file(self, capsys, dense_exp, noise_calib, tmp_path):
        argv = self._argv(dense_exp, noise_calib, tmp_path / "out")
        argv[3] = str(tmp_path / "nope.pth")
        self._check(capsys, dense_exp, argv, r"not found: .*nope\.pth", tmp_path / "out")

    def test_missing_calib_dir(self, capsys, dense_exp, tmp_path):
        argv = self._argv(dense_exp, tmp_path / "no_such_dir", tmp_path / "out")
        self._check(capsys, dense_exp, argv, r"data directory not found", tmp_path / "out")

    def test_output_is_a_file(self, capsys, dense_exp, noise_calib, tmp_path):
        out = tmp_path / "out"
        out.write_text("x")
        argv = self._argv(dense_exp, noise_calib, out)
        before = out.read_text()
        status = compress_cli.cli(argv)
        assert status == 1 and out.read_text() == before
        assert "is not a directory" in capsys.readouterr().err

    def test_output_unwritable(self, capsys, dense_exp, noise_calib, tmp_path):
        out = Path("/proc/espnet_lowrank_test/out")  # not writable, even for root
        self._check(capsys, dense_exp, self._argv(dense_exp, noise_calib, out), r"not writable", out)

    @pytest.mark.parametrize("how", ["same", "symlink", "inside"])
    def test_output_is_or_inside_the_source(self, how, capsys, dense_exp, noise_calib, tmp_path):
        src = tmp_path / "src"
        shutil.copytree(dense_exp, src)
        digests = {p.name: _digest(p) for p in src.iterdir() if p.is_file()}
        exp = src
        out = {"same": src, "symlink": src, "inside": src / "lowrank"}[how]
        if how == "symlink":
            (tmp_path / "link").symlink_to(src)
            exp = tmp_path / "link"
        status = compress_cli.cli(self._argv(exp, noise_calib, out, "--overwrite"))
        err = capsys.readouterr().err
        assert status == 1, err
        assert ("holds the source file" in err) or ("inside the source model's dir" in err), err
        assert {p.name: _digest(p) for p in src.iterdir() if p.is_file()} == digests
        assert not (src / "lowrank").exists()

    def test_truncated_model_file(self, capsys, dense_exp, noise_calib, tmp_path):
        exp = tmp_path / "exp"
        exp.mkdir()
        shutil.copy(dense_exp / "config.yaml", exp)
        (exp / "model.pth").write_bytes((dense_exp / "model.pth").read_bytes()[: 1 << 20])
        self._check(capsys, exp, self._argv(exp, noise_calib, tmp_path / "out"),
                    r"cannot read .*model\.pth \(truncated", tmp_path / "out")

    def test_model_file_from_another_model(self, capsys, dense_exp, noise_calib, tmp_path):
        exp = tmp_path / "exp"
        exp.mkdir()
        shutil.copy(dense_exp / "config.yaml", exp)
        torch.save(torch.nn.Linear(4, 4).state_dict(), exp / "model.pth")
        self._check(capsys, exp, self._argv(exp, noise_calib, tmp_path / "out"),
                    r"does not match the checkpoint", tmp_path / "out")

    def test_pickle_that_runs_code(self, capsys, dense_exp, noise_calib, tmp_path):
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        exp = tmp_path / "exp"
        exp.mkdir()
        shutil.copy(dense_exp / "config.yaml", exp)
        with open(exp / "model.pth", "wb") as f:
            pickle.dump({"x": Evil()}, f)
        self._check(capsys, exp, self._argv(exp, noise_calib, tmp_path / "out"),
                    r"not a plain state dict", tmp_path / "out")
        assert not marker.exists()


def test_accepted_audio_is_converted_and_long_files_logged(tmp_path, caplog):
    """8 kHz and stereo audio are resampled / averaged; they pass the check."""
    wav8k = tmp_path / "8k.wav"
    soundfile.write(str(wav8k), _noise(2.0, sr=8000), 8000)
    stereo = tmp_path / "stereo.wav"
    soundfile.write(str(stereo), _noise(2.0, channels=2), SR)
    assert load_audio(str(wav8k)).shape == (2 * SR,)
    assert load_audio(str(stereo)).shape == (2 * SR,)
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "wav.scp").write_text(f"a {wav8k}\nb {stereo}\n")
    assert check_calibration_audio(read_data_dir(str(calib))) == pytest.approx(4.0)


# --- signals: a subprocess is stopped mid-compression or mid-write ---------

_PATCHED_RUN = """
import sys, time, torch
stage = sys.argv[1]
if stage == "compress":
    eigh = torch.linalg.eigh
    def slow_eigh(*a, **k):
        print("STAGE", flush=True); time.sleep(120); return eigh(*a, **k)
    torch.linalg.eigh = slow_eigh
else:
    save = torch.save
    def slow_save(*a, **k):
        save(*a, **k); print("STAGE", flush=True); time.sleep(120)
    torch.save = slow_save
from espnet_lowrank.bin.compress import cli
sys.exit(cli(sys.argv[2:]))
"""


@pytest.mark.slow
# Each signal once and each stage once: the write stage needs a whole compression,
# and both signals reach the same cleanup (utils.sigterm_as_interrupt).
@pytest.mark.parametrize("stage, sig", [("compress", signal.SIGTERM), ("write", signal.SIGINT)],
                         ids=["compress-SIGTERM", "write-SIGINT"])
def test_signal_leaves_nothing_behind(stage, sig, dense_exp, noise_calib, tmp_path):
    before = {p.name: _digest(p) for p in dense_exp.iterdir() if p.is_file()}
    out = tmp_path / "out"
    argv = ["--asr_train_config", str(dense_exp / "config.yaml"), "--asr_model_file",
            str(dense_exp / "model.pth"), "--calib_data", str(noise_calib), "--output_dir", str(out),
            # θ, not the default's budget: the write stage comes without the sensitivity probes
            "--lowrank_config", str(ROOT / "conf" / "lowrank" / "whisper_tiny_liteasr.yaml")]
    env = dict(os.environ, ESPNET_LOWRANK_NO_TQDM="1")
    # A job started in the background by a non-interactive shell (as CI may
    # be) inherits SIGINT ignored; give the child a terminal's default.
    proc = subprocess.Popen([sys.executable, "-c", _PATCHED_RUN, stage, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("STAGE"):
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1], err[-2000:]
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    assert {p.name: _digest(p) for p in dense_exp.iterdir() if p.is_file()} == before


# --- bug: a dense model.pth in a compressed exp dir decoded with exit 0 -----

def test_stock_loader_refuses_a_model_pth_that_does_not_fit_the_plan(dense_exp, tmp_path):
    """ESPnet loads with strict=False; the low-rank encoder refuses anyway."""
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_lowrank.artifact import KeyMismatchError, build_asr_model, lowrank_train_config, read_yaml

    train_config = read_yaml(str(dense_exp / "config.yaml"))
    plan = {"encoders.blocks.0.mlp.0": 64, "encoders.blocks.1.attn.query": 32}
    config = lowrank_train_config(train_config, {"plan": plan, "attention": "dense"})
    exp = tmp_path / "lowrank"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump(config))
    model = build_asr_model(config)
    torch.save(model.state_dict(), exp / "model.pth")
    assert config["encoder_conf"]["version"] == 1
    # its own weights load, through the stock Speech2Text
    s2t = Speech2Text(str(exp / "config.yaml"), str(exp / "model.pth"))
    assert torch.equal(s2t.asr_model.encoder.encoders.blocks[0].mlp[0].down.weight,
                       model.encoder.encoders.blocks[0].mlp[0].down.weight)
    # the dense model's weights are refused, naming the missing factor keys
    shutil.copy(dense_exp / "model.pth", exp / "model.pth")
    with pytest.raises(KeyMismatchError, match=r"2 missing keys .*mlp\.0\.down|missing keys"):
        Speech2Text(str(exp / "config.yaml"), str(exp / "model.pth"))


def test_ten_minute_audio_is_cut_with_a_log_line(dense_exp, caplog):
    """Whisper sees 30 s; a longer utterance is cut, and the log says so."""
    from espnet_lowrank.artifact import load_asr_model

    model, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    speech = torch.from_numpy(_noise(600.0))[None]
    with caplog.at_level("WARNING"):
        mel, lens = model.encoder.log_mel(speech, torch.tensor([speech.shape[1]]))
    assert lens.tolist() == [3000]
    assert any("600.0 s is cut to Whisper's 30 s window" in r.getMessage() for r in caplog.records)
