"""bench/heldout_eval.py at a toy size: held-out selection, rows, paired deltas;
its table and figure (``espnet_lowrank.eval``); rescoring kept hypotheses
(bench/score_hyps.py, bench/error_utterances.py)."""

import json

import pytest
import torch

from espnet_lowrank.eval.plots import heldout_plot
from espnet_lowrank.eval.pool import heldout_sets
from espnet_lowrank.eval.tables import ci, delta, find, fmt, heldout_markdown, sdi, spread
from espnet_lowrank.scoring import paired_bootstrap, utterance_errors
from cli import bench_module, bench_script  # tests/ is on sys.path


def test_heldout_sets_exclude_pool_ids_and_transcripts(tmp_path):
    from espnet_lowrank.data import Utterance, write_data_dir

    takes = [Utterance(f"a{i}", str(tmp_path / "x.flac"), "SAME PROMPT" if i < 2 else f"PROMPT {i}")
             for i in range(5)]
    (tmp_path / "x.flac").write_bytes(b"")
    write_data_dir(str(tmp_path / "arctic"), takes)
    librispeech = [Utterance(f"ls{i}", str(tmp_path / "x.flac"), f"LS {i}") for i in range(4)]
    pool = librispeech[:2] + takes[:1]
    sets = heldout_sets(str(tmp_path), ["librispeech_train-clean-100", "arctic:2"], librispeech, pool)
    assert [u.utt_id for u in sets["librispeech_train-clean-100"]] == ["ls2", "ls3"]
    assert [u.utt_id for u in sets["arctic"]] == ["a2", "a3"]  # a1 is another take of a pooled prompt
    with pytest.raises(SystemExit, match="expected SET or SET:N"):
        heldout_sets(str(tmp_path), ["arctic:two"], librispeech, pool)
    with pytest.raises(SystemExit, match="arctic: no held-out utterances"):
        heldout_sets(str(tmp_path), ["arctic"], librispeech, takes)


def test_heldout_eval_toy_run(dense_exp, lowrank_exp, shared_data_dir, tmp_path):
    main = bench_module("heldout_eval").main
    out = tmp_path / "heldout"
    cmd = ["--model", str(dense_exp),
           "--exps", str(lowrank_exp), "--int8", lowrank_exp.name, "--sets", "vctk:2", "pocketsphinx:1",
           "--data", str(shared_data_dir), "--num_calib", "4", "--calib_extra", "--pool_size", "4",
           "--samples", "100", "--out_dir", str(out)]
    int8_row = f"{lowrank_exp.name} + int8"
    bench_script("heldout_eval", *cmd, "--no_loop_guard", int8_row, cwd=tmp_path, timeout=1800)
    rows = json.loads((out / "heldout.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["dense", lowrank_exp.name, int8_row, f"{int8_row}, no loop guard"]
    dense, low, guarded, unguarded = rows
    # nothing loops here, so the guard changes no hypothesis
    assert (out / "hyps" / int8_row.replace(" ", "_") / "vctk.txt").read_text() == \
        (out / "hyps" / f"{int8_row},_no_loop_guard".replace(" ", "_") / "vctk.txt").read_text()
    assert guarded["sets"]["vctk"]["err"] == unguarded["sets"]["vctk"]["err"]
    assert dense["params_pct"] == 100.0 and low["params_pct"] < 100.0
    for s in ("vctk", "pocketsphinx"):
        assert dense["sets"][s]["delta"] is None
        delta, lo, hi = low["sets"][s]["delta"]
        assert abs(delta - (low["sets"][s]["err"] - dense["sets"][s]["err"])) < 1e-6
        assert lo <= delta <= hi
    assert dense["sets"]["vctk"]["utts"] == 2 and (out / "heldout.png").is_file()
    assert len((out / "hyps" / "dense" / "vctk.txt").read_text().splitlines()) == 2
    # bad arguments end before any model loads (in process: the checks, not the imports, are under test)
    threads = torch.get_num_threads()  # main sets it for the process
    try:
        with pytest.raises(SystemExit, match="not an exp dir"):
            main(cmd[:-1] + [str(tmp_path / "x"), "--exps", str(tmp_path)])
        with pytest.raises(SystemExit, match=r"--no_loop_guard names rows that are not run: \['dense \+ int8'\]"):
            main(cmd + ["--no_loop_guard", "dense + int8"])
    finally:
        torch.set_num_threads(threads)


def test_score_hyps_against_a_row(tmp_path, capsys):
    """bench/score_hyps.py --against: each row's paired difference to another row."""
    main = bench_module("score_hyps").main

    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "text").write_text("u1 the cat sat down\nu2 a dog ran off today\n")
    for row, hyps in {"a": "u1 the cat sat down\nu2 a dog ran off today\n",
                      "b": "u1 the cat sat\nu2 a dog ran off today\n"}.items():
        (tmp_path / "run" / "hyps" / row).mkdir(parents=True)
        (tmp_path / "run" / "hyps" / row / "toy.txt").write_text(hyps)
    main([str(tmp_path / "run"), "b", "--against", "a", "--data", str(tmp_path / "data"), "--samples", "50"])
    line = capsys.readouterr().out
    assert "toy 11.11 (0.0 / 11.1 / 0.0), 2 utts, Δ a +11.11 [" in line, line
    with pytest.raises(SystemExit, match="c: no such row"):
        main([str(tmp_path / "run"), "c", "--data", str(tmp_path / "data")])
    # against a row of an earlier run whose dense row decoded alike
    for run in ("run", "old"):
        (tmp_path / run / "hyps" / "dense").mkdir(parents=True)
        (tmp_path / run / "hyps" / "dense" / "toy.txt").write_text("u1 the cat sat down\nu2 a dog ran off\n")
    (tmp_path / "old" / "hyps" / "a").mkdir()
    (tmp_path / "old" / "hyps" / "a" / "toy.txt").write_text("u1 the cat sat down\nu2 a dog ran off today\n")
    main([str(tmp_path / "run"), "b", "--against", "a", "--against_run", str(tmp_path / "old"),
          "--data", str(tmp_path / "data"), "--samples", "50"])
    assert "toy 11.11 (0.0 / 11.1 / 0.0), 2 utts, Δ a +11.11 [" in capsys.readouterr().out
    (tmp_path / "old" / "hyps" / "dense" / "toy.txt").write_text("u1 the cat\nu2 a dog ran off\n")
    with pytest.raises(SystemExit, match="dense rows of .* differ on toy"):
        main([str(tmp_path / "run"), "b", "--against", "a", "--against_run", str(tmp_path / "old"),
              "--data", str(tmp_path / "data")])


def test_score_hyps_loop_guard(tmp_path, capsys):
    """--loop_guard: a looping hypothesis is cut where the decoder's guard ends it."""
    main = bench_module("score_hyps").main

    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "text").write_text("u1 in june eighteen forty eight\nu2 new york new york\n")
    (tmp_path / "run" / "hyps" / "r").mkdir(parents=True)
    loop = "In June 1848" + ", New York" * 40 + ","
    (tmp_path / "run" / "hyps" / "r" / "toy.txt").write_text(f"u1 {loop}\nu2 New York, New York.\n")
    main([str(tmp_path / "run"), "r", "--data", str(tmp_path / "data")])
    assert "toy 1142.86 (0.0 / 0.0 / 1142.9), 2 utts" in capsys.readouterr().out  # 80 inserted, 7 words
    main([str(tmp_path / "run"), "r", "--data", str(tmp_path / "data"), "--loop_guard", "tiny.en"])
    # ", New York" four times (12 tokens) ends u1: 8 inserted; u2's two repeats are speech and stay
    assert "toy 114.29 (0.0 / 0.0 / 114.3), 2 utts, 1 cut" in capsys.readouterr().out


def test_error_utterances_across_runs(tmp_path, capsys):
    """bench/error_utterances.py: per-speaker errors and the utterances worse
    than each run's dense row in the most runs, counted by hand here."""
    main = bench_module("error_utterances").main

    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "text").write_text("a_1 ask her to bring it\na_2 the red bags\nb_1 please call stella\n")
    (data / "utt2spk").write_text("a_1 a\na_2 a\nb_1 b\n")
    dense = "a_1 Ask her to bring it.\na_2 the red bugs\nb_1 Please call Stella.\n"
    rows = {"run1": "a_1 Oscar to bring it.\na_2 the red bags\nb_1 Please call Stella.\n",
            "run2": "a_1 Oscar to bring it.\na_2 the red bugs\nb_1 Please cool Stella.\n"}
    for run, hyps in rows.items():
        for row, text in (("dense", dense), ("cut", hyps)):
            (tmp_path / run / "hyps" / row).mkdir(parents=True)
            (tmp_path / run / "hyps" / row / "toy.txt").write_text(text)
    main(["--set", "toy", "--data", str(tmp_path / "data"), str(tmp_path / "run1" / "hyps" / "cut"),
          str(tmp_path / "run2" / "hyps" / "cut")])
    out = capsys.readouterr().out
    assert "toy: 3 utterances, 11 words, 2 rows" in out
    assert "a: 2 utts, 8 words; dense 1; rows [2, 3]" in out and "b: 1 utts, 3 words; dense 0; rows [0, 1]" in out
    assert "errors over dense, per row: [1, 3]" in out
    assert "a_1 (a): worse in 2, errors dense 0, rows [2, 2]" in out  # "ask her" -> "oscar": 1 sub + 1 del
    assert "b_1 (b): worse in 1" in out and "better than dense in the most rows: a_2 (1)" in out
    with pytest.raises(SystemExit, match="no hypotheses for other"):
        main(["--set", "other", "--data", str(tmp_path / "data"), str(tmp_path / "run1" / "hyps" / "cut")])


def _heldout_row(name, err, d):
    return {"name": name, "params_pct": 100.0 if d is None else 74.25,
            "sets": {s: {"err": err, "sub": err - 1, "del": 0.25, "ins": 0.75, "utts": 2, "words": 9,
                         "delta": d} for s in ("vctk", "pocketsphinx")}}


HELDOUT = [_heldout_row("dense", 4.0, None), _heldout_row("cut", 5.5, (1.5, -0.25, 3.125))]


def test_table_cells():
    assert sdi(5.456, 4.0, 0.25, 1.25) == "5.46 (4.0 / 0.2 / 1.2)"
    assert sdi(5.456, 4.0, 0.25, 1.25, digits=1, sep="/") == "5.5 (4.0/0.2/1.2)"
    assert delta((1.5, -0.25, 3.125)) == "+1.50 [-0.25, +3.12]"
    assert ci((1.5, -0.25, 3.125)) == "+1.50 [−0.25, +3.12]"  # typographic minus
    assert (fmt(None), fmt(-1.0), fmt(2.0, sign=False)) == ("—", "−1.00", "2.00")
    assert spread([1.0, -1.0, 3.0]) == "+1.00 (−1.00 … +3.00)"
    rows = [{"kind": "a", "x": 1}, {"kind": "a", "x": 2}, {"kind": "b", "x": 1}]
    assert find(rows, kind="a", x=1) == rows[:1] and find(rows) == rows


def test_heldout_markdown_rows_and_deltas():
    md = heldout_markdown(HELDOUT, ["vctk", "pocketsphinx"], "meta")
    lines = md.splitlines()
    assert lines[0] == "meta" and lines[1] == ""
    assert lines[2] == ("| row | params % | vctk: WER (S / D / I) | Δ dense [95%] | "
                        "pocketsphinx: WER (S / D / I) | Δ dense [95%] |")
    assert lines[3] == "|" + "---|" * 6
    assert lines[4] == "| dense | 100.0 | 4.00 (3.0 / 0.2 / 0.8) | — | 4.00 (3.0 / 0.2 / 0.8) | — |"
    assert lines[5].startswith("| cut | 74.2 | 5.50 (4.5 / 0.2 / 0.8) | +1.50 [-0.25, +3.12] |")


def test_heldout_plot_writes_a_png(tmp_path):
    heldout_plot(HELDOUT, ["vctk", "pocketsphinx"], str(tmp_path / "heldout.png"))
    assert (tmp_path / "heldout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bootstrap_of_a_row_that_loses_one_word_in_two():
    """The Δ of heldout_eval's table: a row worse on half the utterances by
    one word each lies above zero, and its interval holds it."""
    refs = {f"u{i}": "red green blue grey" for i in range(20)}
    hyps = {k: ("red green blue" if i % 2 else v) for i, (k, v) in enumerate(refs.items())}
    d, lo, hi = paired_bootstrap(utterance_errors(refs, refs), utterance_errors(refs, hyps), samples=300)
    assert d == pytest.approx(12.5) and 0 < lo <= d <= hi
