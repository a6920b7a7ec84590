import os

import numpy as np
import pytest
import soundfile as sf
import torch

from espnet_lowrank.audio import load_audio
from espnet_lowrank.batches import iter_batches, num_batches, pack
from espnet_lowrank.data import (
    Utterance,
    import_librispeech,
    prepare_data_dir,
    read_data_dir,
    select,
    write_data_dir,
)


def _wav(path, n, sr=16000, channels=1, value=0.1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.full((n, channels), value, dtype=np.float32) if channels > 1 else np.full(n, value, np.float32)
    sf.write(path, data, sr, subtype="PCM_16")
    return str(path)


def _scp(d, lines, name="wav.scp"):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        f.write("".join(line + "\n" for line in lines))


def test_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        read_data_dir(tmp_path / "nope")


def test_missing_wav_scp(tmp_path):
    with pytest.raises(FileNotFoundError, match="no wav.scp"):
        read_data_dir(tmp_path)


def test_empty_wav_scp(tmp_path):
    _scp(tmp_path, [])
    with pytest.raises(ValueError, match="is empty"):
        read_data_dir(tmp_path)


def test_missing_audio_files_listed(tmp_path):
    _wav(str(tmp_path / "a.wav"), 100)
    _scp(tmp_path, ["a a.wav", "b b.wav", "c /abs/c.wav"])
    with pytest.raises(FileNotFoundError, match=r"2 of 3 audio files are missing: b -> .*b\.wav; c -> /abs/c\.wav"):
        read_data_dir(tmp_path)


def test_malformed_duplicate_and_pipe(tmp_path):
    _wav(str(tmp_path / "a.wav"), 100)
    _scp(tmp_path, ["a a.wav", "lonely"])
    with pytest.raises(ValueError, match=r"wav.scp:2: malformed"):
        read_data_dir(tmp_path)
    _scp(tmp_path, ["a a.wav", "a a.wav"])
    with pytest.raises(ValueError, match=r"wav.scp:2: duplicate utterance id 'a'"):
        read_data_dir(tmp_path)
    _scp(tmp_path, ["a sox a.wav -t wav - |"])
    with pytest.raises(ValueError, match="piped command"):
        read_data_dir(tmp_path)


def test_text_and_require_text(tmp_path):
    _wav(str(tmp_path / "a.wav"), 100)
    _wav(str(tmp_path / "b.wav"), 100)
    _scp(tmp_path, ["b b.wav", "a a.wav"])
    with pytest.raises(FileNotFoundError, match="no text file"):
        read_data_dir(tmp_path, require_text=True)
    _scp(tmp_path, ["a HELLO WORLD", "b"], name="text")
    utts = read_data_dir(tmp_path, require_text=True)
    assert [u.utt_id for u in utts] == ["a", "b"]
    assert [u.text for u in utts] == ["HELLO WORLD", ""]
    assert utts[0].wav_path == str(tmp_path / "a.wav")
    _scp(tmp_path, ["a HELLO", "zz WHO"], name="text")
    with pytest.raises(ValueError, match="ids not in wav.scp: zz"):
        read_data_dir(tmp_path)


def test_corrupt_and_empty_audio(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="cannot read audio file .*bad.wav"):
        load_audio(str(bad))
    empty = _wav(str(tmp_path / "empty.wav"), 0)
    with pytest.raises(ValueError, match="empty.wav is empty"):
        load_audio(empty)
    with pytest.raises(FileNotFoundError):
        load_audio(str(tmp_path / "missing.wav"))


def test_non_finite_audio(tmp_path):
    p = str(tmp_path / "nan.wav")
    sf.write(p, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="non-finite"):
        load_audio(p)


def test_load_audio_stereo_and_resample(tmp_path):
    st = _wav(str(tmp_path / "st.wav"), 800, channels=2, value=0.25)
    a = load_audio(st)
    assert a.dtype == np.float32 and a.shape == (800,)
    np.testing.assert_allclose(a, 0.25, atol=1e-4)
    r = _wav(str(tmp_path / "r.wav"), 22050, sr=22050)
    b = load_audio(r, 16000)
    assert b.dtype == np.float32 and b.shape == (16000,)


def test_relative_paths_on_an4(shared_data_dir):
    d = shared_data_dir / "an4"
    utts = read_data_dir(str(d), require_text=True)
    assert len(utts) > 10
    assert [u.utt_id for u in utts] == sorted(u.utt_id for u in utts)
    for u in utts:
        assert os.path.isabs(u.wav_path) and os.path.isfile(u.wav_path)
        assert u.wav_path.startswith(str(d.resolve()))
    audio = load_audio(utts[0].wav_path)
    assert audio.ndim == 1 and audio.dtype == np.float32 and len(audio) > 1000


def test_write_and_prepare_roundtrip(tmp_path, shared_data_dir):
    out = tmp_path / "an4_abs"
    utts = prepare_data_dir(str(shared_data_dir / "an4"), str(out))
    lines = (out / "wav.scp").read_text().splitlines()
    assert len(lines) == len(utts)
    assert all(os.path.isabs(line.split(maxsplit=1)[1]) for line in lines)
    back = read_data_dir(str(out), require_text=True)
    assert [(u.utt_id, u.wav_path, u.text) for u in back] == [(u.utt_id, u.wav_path, u.text) for u in utts]


def test_write_data_dir_files(tmp_path):
    a = _wav(str(tmp_path / "w" / "a.wav"), 10)
    b = _wav(str(tmp_path / "w" / "b.wav"), 10)
    out = tmp_path / "d"
    write_data_dir(str(out), [Utterance("b", b, "B  TEXT", speaker="s1"), Utterance("a", a, "A", speaker="s1")])
    assert (out / "wav.scp").read_text() == f"a {a}\nb {b}\n"
    assert (out / "text").read_text() == "a A\nb B TEXT\n"
    assert (out / "utt2spk").read_text() == "a s1\nb s1\n"
    assert (out / "spk2utt").read_text() == "s1 a b\n"
    write_data_dir(str(out), [Utterance("a", a, None)])
    assert (out / "utt2spk").read_text() == "a a\n"
    with pytest.raises(ValueError, match="duplicate"):
        write_data_dir(str(out), [Utterance("a", a), Utterance("a", a)])


def test_import_librispeech(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, ch, n in [("84", "121123", 2), ("174", "50561", 1)]:
        d = root / spk / ch
        d.mkdir(parents=True)
        lines = []
        for i in range(n):
            uid = f"{spk}-{ch}-{i:04d}"
            sf.write(str(d / f"{uid}.flac"), np.zeros(160, np.float32), 16000)
            lines.append(f"{uid} WORDS OF {uid}")
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    utts = import_librispeech(str(root))
    assert [u.utt_id for u in utts] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert utts[1].text == "WORDS OF 84-121123-0000" and utts[1].speaker == "84"
    assert utts[1].wav_path.endswith("84/121123/84-121123-0000.flac")
    out = tmp_path / "kaldi"
    prepare_data_dir(str(root), str(out))
    assert (out / "spk2utt").read_text() == "174 174-50561-0000\n84 84-121123-0000 84-121123-0001\n"
    assert len(read_data_dir(str(out), require_text=True)) == 3
    with pytest.raises(FileNotFoundError, match="not a LibriSpeech tree"):
        import_librispeech(str(tmp_path / "kaldi"))


def test_batches_and_select(tmp_path):
    utts = [Utterance(f"u{i}", _wav(str(tmp_path / f"u{i}.wav"), n, value=0.5), None)
            for i, n in enumerate([100, 300, 200, 50, 10])]
    assert num_batches(5, 2) == 3 and num_batches(4, 2) == 2 and num_batches(0, 3) == 0
    batches = list(iter_batches(utts, 2))
    assert len(batches) == 3
    speech, lengths = batches[0]
    assert speech.shape == (2, 300) and speech.dtype == torch.float32
    assert lengths.dtype == torch.int64 and lengths.tolist() == [100, 300]
    assert torch.all(speech[0, 100:] == 0) and torch.all(speech[0, :100].abs() > 0.4)
    assert batches[2][0].shape == (1, 10)
    chosen = select(list(reversed(utts)), 3)
    assert [u.utt_id for u in chosen] == ["u0", "u1", "u2"]
    assert len(select(utts, None)) == 5


def test_packed_windows(tmp_path):
    """``pack_seconds``: consecutive utterances share a row, 0.2 s of silence
    between them, never more than the window; a longer one is a row alone."""
    seconds = [1.0, 1.5, 0.5, 3.5, 0.8]
    utts = [Utterance(f"u{i}", _wav(str(tmp_path / f"u{i}.wav"), int(16000 * s), value=0.5), None)
            for i, s in enumerate(seconds)]
    windows = pack(utts, 3.0)
    assert [[u.utt_id for u in w] for w in windows] == [["u0", "u1"], ["u2"], ["u3"], ["u4"]]
    assert [[u.utt_id for u in w] for w in pack(utts, None)] == [[u.utt_id] for u in utts]
    speech, lengths = next(iter_batches(utts, 4, pack_seconds=3.0))
    assert lengths.tolist() == [16000 + 3200 + 24000, 8000, 56000, 12800]
    row = speech[0]
    assert torch.all(row[:16000].abs() > 0.4) and torch.all(row[16000:19200] == 0)
    assert torch.all(row[19200:43200].abs() > 0.4) and torch.all(row[43200:] == 0)
