"""espnet_lowrank.eval.e2e without a model: items (short and 30 s windows),
rounds that alternate, and the table's ratios and WER cells."""

import numpy as np
import soundfile

from espnet_lowrank.eval.e2e import Variant, items_from, markdown, rows_of, run_rounds


WORDS = ["RED", "GREEN", "BLUE", "GREY"]


def _kaldi_dir(path, seconds):
    path.mkdir()
    wavs, texts = [], []
    for i, s in enumerate(seconds):
        wav = path / f"u{i}.wav"
        soundfile.write(str(wav), np.zeros(int(s * 16000), dtype="float32"), 16000)
        wavs.append(f"u{i} {wav}\n")
        texts.append(f"u{i} {WORDS[i]} CAT\n")
    (path / "wav.scp").write_text("".join(wavs))
    (path / "text").write_text("".join(texts))
    return path


def test_items_short_and_long_form(tmp_path):
    data = _kaldi_dir(tmp_path / "set", [12.0, 12.0, 12.0, 5.0])
    short = items_from(str(data))
    assert [i.key for i in short] == ["u0", "u1", "u2", "u3"] and short[0].seconds == 12.0
    windows = items_from(str(data), long_form=True)
    # 12 + 0.2 + 12 fits 30 s, a third 12 s does not: [u0 u1] [u2 u3]
    assert [(w.key, w.text) for w in windows] == [("u0", "RED CAT GREEN CAT"), ("u2", "BLUE CAT GREY CAT")]
    assert abs(windows[0].seconds - 24.2) < 1e-6 and windows[0].set_name == "set (30 s)"
    assert [i.key for i in items_from(str(data), 1, 3)] == ["u1", "u2"]


def test_rounds_alternate_and_rows_compare_to_dense(tmp_path):
    items = items_from(str(_kaldi_dir(tmp_path / "set", [1.0, 1.0])))
    calls = []

    def transcriber(name, text):
        def transcribe(audio):
            calls.append(name)
            return text
        return transcribe

    dense = Variant("dense", transcriber("dense", "RED CAT"))
    other = Variant("other", transcriber("other", "RED"))
    run_rounds([dense, other], items, rounds=2)
    assert calls == ["dense", "dense", "other", "other", "other", "other", "dense", "dense"]
    dense.seconds, other.seconds = 4.0, 2.0  # as if measured: the ratios follow
    rows = rows_of([dense, other], items, rounds=2)
    assert (rows[0].vs_dense, rows[1].vs_dense, rows[1].seconds, rows[1].rtf) == (1.0, 0.5, 1.0, 0.5)
    # of 4 words: dense misses GREEN (1 sub); other misses CAT in u0 and GREEN CAT in u1 (1 sub, 2 del)
    assert (rows[0].scores["set"].err, rows[1].scores["set"].err) == (25.0, 75.0)
    table = markdown(rows)
    assert "| other | 1.0 | 0.500 | 0.50 | — | 75.00 (25.0/50.0/0.0) |" in table, table
