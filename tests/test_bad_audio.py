"""Hostile audio and data files: memory follows
the audio a model reads, not a file's header; errors are one line naming the
file; FIFOs, directories and devices are never opened."""

import logging
import os
import signal
import struct
import time

import numpy as np
import pytest
import soundfile
import torch

from espnet_lowrank import batches as data
from espnet_lowrank.audio import check_calibration_audio, load_audio
from espnet_lowrank.batches import batch_windows
from espnet_lowrank.calibration import calibrate
from espnet_lowrank.data import Utterance, read_data_dir
from cli import run_cli  # tests/ is on sys.path

SR = 16000


def _noise(seconds: float, sr: int = SR, scale: float = 0.1) -> np.ndarray:
    return (scale * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype("float32")


def _wav(path, audio, sr: int = SR) -> str:
    soundfile.write(str(path), audio, sr, subtype="FLOAT")
    return str(path)


def _with_header_rate(path, rate: int) -> str:
    """A valid 8 kHz PCM WAV whose header then claims ``rate`` Hz."""
    soundfile.write(str(path), np.zeros(2000, np.float32), 8000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[24:28] = struct.pack("<I", rate)       # sample rate
    raw[28:32] = struct.pack("<I", 2 * rate)   # byte rate
    path.write_bytes(bytes(raw))
    return str(path)


@pytest.fixture
def no_hang():
    """Fail instead of hanging (a FIFO opened for reading blocks forever)."""
    def boom(*_):
        raise TimeoutError("hung: a FIFO was opened")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --- item 2: the header's sample rate, and only the frames that are used ------

@pytest.mark.parametrize("rate", [1, 300000])
def test_absurd_sample_rate_is_refused_in_one_line(tmp_path, rate):
    path = _with_header_rate(tmp_path / "bad_rate.wav", rate)
    assert soundfile.info(path).samplerate == rate
    started = time.perf_counter()
    with pytest.raises(ValueError) as err:
        load_audio(path)  # before the fix: 1 Hz became 32 M samples at 16 kHz
    assert time.perf_counter() - started < 2.0
    msg = str(err.value)
    assert "\n" not in msg and path in msg and f"{rate} Hz" in msg
    utts = [Utterance("u", path)]
    with pytest.raises(ValueError, match=f"{rate} Hz"):
        check_calibration_audio(utts)


@pytest.mark.parametrize("sr", [SR, 8000])
def test_long_file_reads_only_the_frames_asked(tmp_path, monkeypatch, sr):
    path = _wav(tmp_path / "long.wav", _noise(40.0, sr), sr)
    full = load_audio(path)
    asked = []
    real_read = soundfile.read

    def read(*args, **kwargs):
        asked.append(kwargs.get("frames", -1))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(soundfile, "read", read)
    cut = load_audio(path, max_seconds=30.0)
    assert cut.shape == (30 * SR,)
    assert asked and all(0 < f <= 30.1 * sr for f in asked)
    # the same samples as reading everything and cutting (resampling included)
    np.testing.assert_allclose(cut, full[: 30 * SR], atol=1e-6)


def test_packed_window_is_cut_to_max_seconds_reading_only_what_it_keeps(tmp_path, monkeypatch):
    a = _wav(tmp_path / "a.wav", _noise(20.0))
    b = _wav(tmp_path / "b.wav", _noise(20.0))
    c = _wav(tmp_path / "c.wav", _noise(5.0))
    window = [Utterance("a", a), Utterance("b", b), Utterance("c", c)]
    asked = []
    real_read = soundfile.read
    monkeypatch.setattr(soundfile, "read", lambda *x, **k: asked.append(k.get("frames")) or real_read(*x, **k))
    (speech, lengths), = list(batch_windows([window], 1, max_seconds=30.0))
    assert lengths.tolist() == [30 * SR] and speech.shape == (1, 30 * SR)
    gap = int(data.PACK_GAP_SECONDS * SR)
    assert asked == [30 * SR, 30 * SR - 20 * SR - gap]  # c, past the cut, is never read
    (full, _), = list(batch_windows([window], 1))
    torch.testing.assert_close(speech[0], full[0, : 30 * SR])


def test_calibration_check_reads_in_blocks_and_says_once_how_many_are_long(tmp_path, monkeypatch, caplog):
    utts = [Utterance(f"u{i}", _wav(tmp_path / f"u{i}.wav", _noise(31.0 + i))) for i in range(3)]
    utts.append(Utterance("short", _wav(tmp_path / "short.wav", _noise(2.0))))
    monkeypatch.setattr(soundfile, "read", None)  # whole-file reads are not used
    with caplog.at_level(logging.WARNING, logger="espnet_lowrank.audio"):
        seconds = check_calibration_audio(utts, max_seconds=30.0)
    assert seconds == pytest.approx(3 * 30.0 + 2.0)
    lines = [r.getMessage() for r in caplog.records if "longer than" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("3 of 4 calibration utterances are longer than 30 s"), lines


def test_whisper_cuts_are_logged_once_and_counted(caplog):
    from espnet_lowrank.whisper.espnet_whisper import LocalWhisperEncoder

    torch.manual_seed(0)
    enc = LocalWhisperEncoder(n_state=8, n_head=2, n_layer=1).eval()
    speech = 0.1 * torch.randn(3, 31 * SR)
    lengths = torch.tensor([31 * SR, 31 * SR, 31 * SR])
    batches = [(speech, lengths), (speech[:2], lengths[:2])]
    with caplog.at_level(logging.INFO):
        calibrate(lambda s, n: enc(s, n), enc, batches, ["encoders.blocks.0.mlp.0"])
    messages = [r.getMessage() for r in caplog.records]
    cuts = [m for m in messages if "cut to Whisper's 30 s window" in m]
    assert len(cuts) == 1, cuts
    assert any("5 rows were cut to the encoder's input window" in m for m in messages), messages
    assert enc.num_cut == 5


# --- item 6: one line naming the file ----------------------------------------

def test_non_finite_activations_name_the_batch_files(tmp_path):
    from espnet_lowrank.whisper.espnet_whisper import LocalWhisperEncoder

    ok = _wav(tmp_path / "ok.wav", _noise(1.0))
    loud = _wav(tmp_path / "loud.wav", _noise(1.0, scale=1e20))  # finite samples, overflowing features
    utts = [Utterance("ok", ok), Utterance("loud", loud)]
    assert check_calibration_audio(utts) > 1.0
    torch.manual_seed(0)
    enc = LocalWhisperEncoder(n_state=8, n_head=2, n_layer=1).eval()
    with pytest.raises(FloatingPointError) as err:
        calibrate(lambda s, n: enc(s, n), enc, data.iter_batches(utts, 1), ["encoders.blocks.0.mlp.0"])
    assert isinstance(err.value, ValueError)  # bad input: the CLI says it in one line
    msg = str(err.value)
    assert "\n" not in msg and "batch 2" in msg and "loud" in msg and loud in msg and ok not in msg


@pytest.mark.parametrize("row", ["loud", "fifo"])
def test_compress_cli_says_it_in_one_line(row, dense_exp, tmp_path, capsys, no_hang):
    from espnet_lowrank.bin import compress as compress_cli

    ok = _wav(tmp_path / "ok.wav", _noise(2.0))
    bad = tmp_path / f"{row}.wav"
    if row == "loud":
        _wav(bad, _noise(2.0, scale=1e20))
    else:
        os.mkfifo(bad)
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "wav.scp").write_text(f"a {ok}\nb {bad}\n")
    capsys.readouterr()
    status = compress_cli.cli(["--asr_train_config", str(dense_exp / "config.yaml"),
                               "--asr_model_file", str(dense_exp / "model.pth"),
                               "--calib_data", str(calib), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert status == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert str(bad) in errors[0], errors[0]
    assert ("non-finite activations" if row == "loud" else "a FIFO, not a regular file") in errors[0]


@pytest.mark.parametrize("name", ["wav.scp", "text", "utt2spk"])
def test_non_utf8_data_file_names_the_file_and_byte_offset(tmp_path, name):
    wav = _wav(tmp_path / "a.wav", _noise(1.0))
    files = {"wav.scp": f"a {wav}\n", "text": "a hello\n", "utt2spk": "a spk\n"}
    d = tmp_path / "data"
    d.mkdir()
    for f, content in files.items():
        (d / f).write_bytes(content.encode())
    bad = b"a " + ("caf\u00e9 ".encode("latin-1") if name == "text" else b"\xff\xfe")
    (d / name).write_bytes(files[name].encode() + bad + b"\n")
    offset = len(files[name].encode()) + (5 if name == "text" else 2)
    with pytest.raises(ValueError) as err:
        read_data_dir(str(d))
    msg = str(err.value)
    assert "\n" not in msg and str(d / name) in msg and f"byte offset {offset}" in msg and ":2:" in msg, msg


# --- item 8d: FIFOs, directories and devices are not "missing" ---------------

def test_fifo_directory_and_device_are_not_regular_files(tmp_path, no_hang):
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    good = _wav(tmp_path / "good.wav", _noise(1.0))
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"a {fifo}\nb {folder}\nc /dev/zero\nd {good}\n")
    with pytest.raises(ValueError) as err:
        read_data_dir(str(d))
    msg = str(err.value)
    assert "\n" not in msg and "missing" not in msg and "3 of 4" in msg, msg
    assert f"{fifo} (a FIFO, not a regular file)" in msg and "(a directory, not a regular file)" in msg
    assert "/dev/zero (a character device, not a regular file)" in msg
    for path, kind in ((fifo, "a FIFO"), (folder, "a directory"), ("/dev/zero", "a character device")):
        with pytest.raises(ValueError, match=f"is {kind}, not a regular file"):
            load_audio(str(path))
        with pytest.raises(ValueError, match="not a regular file"):
            check_calibration_audio([Utterance("x", str(path))])
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(str(tmp_path / "gone.wav"))


# --- audit: a recipe replaces the folders it made, never the user's ----------

def test_whisper_recipe_data_step_never_deletes_a_folder_it_did_not_make(tmp_path):
    import shutil
    import sys
    from pathlib import Path

    from espnet_lowrank.data import write_data_dir

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "recipes" / "common", tmp_path / "recipes" / "common")
    recipe = tmp_path / "recipes" / "whisper" / "asr1"
    shutil.copytree(root / "recipes" / "whisper" / "asr1" / "local", recipe / "local")
    src = tmp_path / "src"
    write_data_dir(str(src), [Utterance(f"u{i}", _wav(tmp_path / f"u{i}.wav", _noise(0.5)), f"word {i}")
                              for i in range(3)])
    mine = recipe / "data" / "calib" / "my_notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's")

    def data_sh():
        return run_cli(["bash", "local/data.sh", "--real_data", src, "--num_calib", "1",
                        "--num_test", "1", "--python", sys.executable], cwd=recipe, check=False)

    proc = data_sh()
    assert proc.returncode != 0 and "data/calib exists but was not made by this recipe" in proc.stderr, proc.stderr
    assert mine.read_text() == "the user's" and not (recipe / "data" / "test").exists()
    mine.unlink()
    mine.parent.rmdir()
    for _ in range(2):  # the second run replaces what the first one made
        proc = data_sh()
        assert proc.returncode == 0, proc.stderr
        assert read_data_dir(str(recipe / "data" / "calib"))[0].utt_id == "u0"
        assert (recipe / "data" / "test" / ".made_by_recipe").is_file()
