import numpy as np
import pytest

from espnet_lowrank.report import markdown_kv_table, plot_ranks, plot_variance_spectra, plot_wer_vs_size
from espnet_lowrank.scoring import (
    ScoreRow,
    basic_normalize,
    get_normalizer,
    markdown_table,
    read_text_file,
    score_texts,
)
from cli import python_m  # tests/ is on sys.path


def test_corpus_wer_not_mean_of_utterances():
    refs = {"a": "the cat sat", "b": "on the mat today"}
    hyps = {"a": "the cat sat", "b": "on a mat"}
    row = score_texts(refs, hyps, "toy", normalize="none")
    # 7 reference words, 1 substitution (the->a), 1 deletion (today): 2/7, not mean(0, 2/4) = 25 %.
    assert (row.snt, row.wrd) == (2, 7)
    assert row.corr == pytest.approx(500 / 7)
    assert row.sub == pytest.approx(100 / 7)
    assert row.dele == pytest.approx(100 / 7)
    assert row.ins == 0.0
    assert row.err == pytest.approx(200 / 7)  # 28.571...
    assert row.s_err == 50.0
    assert row.cells() == ["toy", "2", "7", "71.4", "14.3", "14.3", "0.0", "28.6", "50.0"]


def test_insertions_and_empty_hypothesis():
    row = score_texts({"a": "a b", "b": "c d"}, {"a": "a x b", "b": ""}, normalize="none")
    # 4 ref words: 2 hits, 2 deletions, 1 insertion -> Err = 3/4.
    assert row.wrd == 4 and row.corr == 50.0 and row.dele == 50.0 and row.ins == 25.0
    assert row.err == 75.0 and row.s_err == 100.0


def test_cer():
    row = score_texts({"a": "abc", "b": "de"}, {"a": "abd", "b": "de"}, normalize="none", unit="char")
    assert row.wrd == 5 and row.sub == 20.0 and row.err == 20.0 and row.s_err == 50.0
    assert row.unit == "char"


def test_missing_hypothesis_lists_ids():
    with pytest.raises(ValueError, match=r"2 of 3 reference ids have no hypothesis: b, c"):
        score_texts({"a": "x", "b": "y", "c": "z"}, {"a": "x"})


def test_whisper_normalizer():
    norm = get_normalizer("whisper")
    assert norm("Mr. Smith paid twenty dollars!") == norm("mister smith paid $20")
    refs = {"u1": "MISTER SMITH PAID TWENTY DOLLARS", "u2": "HELLO, WORLD."}
    hyps = {"u1": "Mr. Smith paid $20.", "u2": "hello world"}
    assert score_texts(refs, hyps, normalize="whisper").err == 0.0
    assert score_texts(refs, hyps, normalize="basic").err > 0.0


def test_basic_normalizer():
    assert basic_normalize("Hello, world! It's 'quoted' -- ok.") == "HELLO WORLD IT'S QUOTED OK"
    with pytest.raises(ValueError, match="unknown normalize"):
        get_normalizer("fancy")


def test_read_text_file_with_empty_hypothesis(tmp_path):
    p = tmp_path / "text"
    p.write_text("u1 HELLO WORLD\nu2\n\nu3   SPACED  OUT \n")
    assert read_text_file(str(p)) == {"u1": "HELLO WORLD", "u2": "", "u3": "SPACED  OUT"}
    p.write_text("u1 A\nu1 B\n")
    with pytest.raises(ValueError, match="text:2: duplicate"):
        read_text_file(str(p))


def test_markdown_table():
    rows = [ScoreRow("test_clean", 2620, 52576, 97.51, 2.3, 0.2, 0.34, 2.84, 31.6)]
    md = markdown_table(rows, extra_columns={"params(M)": [12.3456], "rank": [64]})
    assert md == (
        "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|params(M)|rank|\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        "|test_clean|2620|52576|97.5|2.3|0.2|0.3|2.8|31.6|12.35|64|\n"
    )
    with pytest.raises(ValueError, match="has 2 values for 1 rows"):
        markdown_table(rows, {"x": [1, 2]})


def test_score_cli(tmp_path):
    ref = tmp_path / "ref"
    hyp_dir = tmp_path / "decode_test" / "1best_recog"
    hyp_dir.mkdir(parents=True)
    ref.write_text("a THE CAT SAT\nb ON THE MAT TODAY\n")
    (hyp_dir / "text").write_text("a the cat sat\nb\n")
    out_md = tmp_path / "res.md"
    res = python_m("espnet_lowrank.bin.score", "--ref", ref, "--hyp", hyp_dir / "text", "--normalize", "basic",
                   "--out_md", out_md)
    assert "|decode_test|2|7|42.9|0.0|57.1|0.0|57.1|50.0|" in res.stdout
    assert out_md.read_text() == res.stdout


def test_report_plots(tmp_path):
    spectra = {"enc.0.fc1": np.cumsum(np.full(8, 1 / 8)), "enc.0.fc2": np.linspace(0.5, 1, 8)}
    plot_variance_spectra(spectra, str(tmp_path / "spec.png"))
    plot_ranks({"a": 3, "b": 5}, {"a": 8, "b": 8}, str(tmp_path / "ranks.png"))
    plot_wer_vs_size([{"label": "full", "size": 39.0, "wer": 5.1}, {"label": "r64", "size": 20.0, "wer": 6.3}],
                     str(tmp_path / "wer.png"), xlabel="params (M)")
    for name in ("spec.png", "ranks.png", "wer.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(ValueError, match="no full rank"):
        plot_ranks({"a": 3}, {}, str(tmp_path / "x.png"))
    assert markdown_kv_table({"rank": 64, "ratio": 0.123456}) == "|key|value|\n|---|---|\n|rank|64|\n|ratio|0.1235|\n"


def test_paired_bootstrap_interval():
    from espnet_lowrank.scoring import paired_bootstrap, utterance_errors

    refs = {f"u{i}": "the cat sat on the mat" for i in range(50)}
    same = utterance_errors(refs, refs)
    worse = utterance_errors(refs, {k: ("the cat sat on a mat" if i % 2 else v)
                                    for i, (k, v) in enumerate(refs.items())})
    assert same["u0"] == (0, 6)
    assert worse["u1"] == (1, 6)
    delta, lo, hi = paired_bootstrap(same, worse, samples=500)
    assert abs(delta - 100 * 25 / 300) < 1e-9  # 25 substitutions in 300 words
    assert 0 < lo < delta < hi
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same utterance ids"):
        paired_bootstrap(same, {"u0": (0, 6)})
