"""bench/vctk_sentences.py: VCTK sentences for Piper calibration speech, none of
them a transcript of the real VCTK evaluation set."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_sentences_skip_the_evaluation_transcripts(monkeypatch, shared_data_dir, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from vctk_sentences import main, words

    held_out = {words(line.split(maxsplit=1)[1]) for line in (shared_data_dir / "vctk" / "text").read_text().splitlines()}
    out = tmp_path / "a.txt"
    main(["--data", str(shared_data_dir), "--num", "500", "--out", str(out)])
    drawn = out.read_text().splitlines()
    assert len(drawn) == len(set(drawn)) == 500
    assert not {words(t) for t in drawn} & held_out
    main(["--data", str(shared_data_dir), "--num", "500", "--out", str(tmp_path / "b.txt")])
    assert (tmp_path / "b.txt").read_text().splitlines() == drawn  # same seed, same draw
    with pytest.raises(SystemExit, match="more than the"):
        main(["--data", str(shared_data_dir), "--num", "10000000", "--out", str(tmp_path / "c.txt")])
