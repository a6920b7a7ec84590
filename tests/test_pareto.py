"""bench/pareto.py end to end at a toy size, the calibration pool, table and
figures it shares through ``espnet_lowrank.eval``, and the tiny.en contract
configs through the stock compress CLI."""

import json
from pathlib import Path

import pytest
import yaml

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.eval.plots import front_plot, front_rows, pareto_plot
from espnet_lowrank.eval.pool import CALIB_SET, calibration_pool
from espnet_lowrank.eval.tables import pareto_markdown, save_tables, table_lines
from cli import bench_script, python_m  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
CONFS = ("whisper_tiny_liteasr.yaml", "whisper_tiny_best.yaml", "whisper_base_best.yaml")


@pytest.mark.parametrize("name", CONFS + ("whisper_int8.yaml",))
def test_contract_configs_parse(name):
    config = LowRankConfig.from_yaml(str(REPO / "conf" / "lowrank" / name))
    if "liteasr" in name:
        assert config.ranks.budget is None  # θ pair, one pass
        assert config.targets.target_modules is None and not config.targets.exclude_modules  # all encoder linears
    if name == "whisper_int8.yaml":  # the main job's: the default with int8 on, nothing else changed
        default = LowRankConfig.from_yaml(str(REPO / "conf" / "lowrank" / "whisper.yaml"))
        assert config.deployment.int8 and config == default.replace(int8=True)


def test_calibration_pool_takes_librispeech_after_the_evaluation_utterances():
    librispeech = [f"ls{i}" for i in range(20)]
    pool = calibration_pool(librispeech, "unused", num_calib=4, calib_extra=[CALIB_SET], n_max=10, num_eval=6)
    assert pool == [f"ls{i}" for i in (0, 1, 2, 3, *range(10, 20))]  # ls4..ls9 are evaluation
    with pytest.raises(SystemExit, match="asks for 15 calibration utterances"):
        calibration_pool(librispeech, "unused", num_calib=4, calib_extra=[CALIB_SET], n_max=15, num_eval=6)


def _row(name, kind, int8, wer, params, detail=True):
    row = {"name": name, "kind": kind, "int8": int8, "wer": {"ls": wer, "vctk": wer + 1},
           "params": params, "params_M": params / 1e6, "gflops": params / 1e7, "latency_ms": params / 1e4,
           "lat_ratio": params / 4e6, "enc_mb": params / 1e5, "compress_s": None if kind == "dense" else 12.4}
    if detail:
        row["wer_detail"] = {s: {"sub": w - 1, "del": 0.5, "ins": 0.5} for s, w in row["wer"].items()}
    return row


ROWS = [_row("dense", "dense", False, 5.0, 4_000_000), _row("dense", "dense", True, 5.2, 4_000_000),
        _row("liteasr_0.98_0.995", "liteasr", False, 5.6, 3_000_000),
        _row("budget_0.75", "budget", False, 5.9, 3_000_000, detail=False),
        _row("my_config", "config", False, 6.5, 2_000_000)]


def test_table_lines_have_a_rule_as_wide_as_the_head():
    assert table_lines(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_pareto_markdown_cells():
    md = pareto_markdown(ROWS, ["ls", "vctk"], "meta line")
    lines = md.splitlines()
    assert lines[0].startswith("| name | int8 | WER ls (S / D / I) | WER vctk (S / D / I) | enc lin params |")
    assert lines[2] == "| dense |  | 5.0 (4.0 / 0.5 / 0.5) | 6.0 (5.0 / 0.5 / 0.5) | 4,000,000 | 100.0 | 0.40 | 400 | 1.00 | 40.0 |  |"
    assert "| dense | yes |" in md
    assert "| budget_0.75 |  | 5.9 | 6.9 | 3,000,000 | 75.0 |" in md  # a row without S / D / I: the WER alone
    assert lines[-1] == "meta line" and md.endswith("\n")


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_tables_writes_markdown_json_and_png(tmp_path, capsys):
    save_tables(str(tmp_path), "pareto", ROWS, ["ls", "vctk"], "meta", pareto_markdown, pareto_plot)
    md = (tmp_path / "pareto.md").read_text()
    assert md == pareto_markdown(ROWS, ["ls", "vctk"], "meta") and md in capsys.readouterr().out
    assert json.loads((tmp_path / "pareto.json").read_text()) == {"rows": ROWS, "meta": "meta"}
    assert _is_png(tmp_path / "pareto.png")
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_front_keeps_a_repeated_row_once_and_plots(tmp_path):
    for run, rows in (("a", ROWS[:3]), ("b", ROWS[:1] + ROWS[3:])):
        (tmp_path / run).mkdir()
        (tmp_path / run / "pareto.json").write_text(json.dumps({"rows": rows, "meta": ""}))
    rows = front_rows([tmp_path / "a", tmp_path / "b"])
    assert [(r["name"], r["int8"]) for r in rows] == [(r["name"], r["int8"]) for r in ROWS]
    front_plot(rows, str(tmp_path / "front.png"))
    assert _is_png(tmp_path / "front.png")
    out = bench_script("plot_front", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cli.png").stdout
    assert out.strip() == f"wrote {tmp_path / 'cli.png'} (5 rows)" and _is_png(tmp_path / "cli.png")


def test_pareto_toy_run(dense_exp, shared_data_dir, tmp_path):
    out = tmp_path / "pareto"
    # A budget row through --configs, at rank steps of 96 (40 sensitivity probes, not 328).
    budget = tmp_path / "budget_0.75.yaml"
    budget.write_text(yaml.safe_dump({"ranks": {"budget": 0.75, "rank_multiple": 96}}))
    bench_script("pareto", "--model", dense_exp, "--data", shared_data_dir, "--num_calib", "4", "--num_eval", "1",
                 "--thetas", "0.98,0.995", "--budgets", "--configs", budget, "--int8", "dense", "budget_0.75",
                 "--repeats", "1", "--out_dir", out, cwd=tmp_path, timeout=1800)
    for f in ("pareto.md", "pareto.json", "pareto.png"):
        assert (out / f).is_file(), f
    rows = json.loads((out / "pareto.json").read_text())["rows"]
    names = [(r["name"], r["int8"]) for r in rows]
    assert names == [("dense", False), ("dense", True), ("liteasr_0.98_0.995", False),
                     ("budget_0.75", False), ("budget_0.75", True)]
    dense, dense8, lite, budget, budget8 = rows
    assert lite["params"] < dense["params"] and budget["params"] < dense["params"]
    assert abs(budget["params"] / dense["params"] - 0.75) < 0.02
    assert dense8["enc_mb"] < 0.5 * dense["enc_mb"] and budget8["enc_mb"] < budget["enc_mb"]
    assert set(dense["wer"]) == {"librispeech_train-clean-100", "vctk"}
    assert "| dense | yes |" in (out / "pareto.md").read_text()
    # Hypotheses are kept per row and set, and the WER splits into sub/del/ins.
    hyps = (out / "hyps" / "budget_0.75_int8" / "vctk.txt").read_text().splitlines()
    first_vctk = (shared_data_dir / "vctk" / "text").read_text().split()[0]
    assert len(hyps) == 1 and hyps[0].split()[0] == first_vctk, hyps
    for r in rows:
        for s, d in r["wer_detail"].items():
            assert abs(d["sub"] + d["del"] + d["ins"] - r["wer"][s]) < 0.05, (r["name"], s, d)
    # --replot redraws the table and plot from pareto.json alone.
    md = (out / "pareto.md").read_text()
    (out / "pareto.png").unlink()
    bench_script("pareto", "--replot", "--out_dir", out)
    assert (out / "pareto.png").is_file() and (out / "pareto.md").read_text() == md


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFS)
def test_contract_configs_through_cli(name, dense_exp, shared_data_dir, tmp_path):
    from espnet_lowrank.data import read_data_dir, write_data_dir

    calib = tmp_path / "calib"
    write_data_dir(str(calib), read_data_dir(str(shared_data_dir / "librispeech_train-clean-100"))[:4])
    out = tmp_path / "out"
    config_file = REPO / "conf" / "lowrank" / name
    config = yaml.safe_load(config_file.read_text())
    steps = LowRankConfig.from_yaml(str(config_file)).recovery.steps
    if steps:
        # The shipped file as it is, but 3 recovery steps (and 2 final ones): the path is what is
        # tested here (the recovery itself: tests/test_sequential.py).
        steps = 3
        config.setdefault("recovery", {})["steps"] = steps
        if config["recovery"].get("final_steps"):
            config["recovery"]["final_steps"] = 2
    budget = config.get("ranks", {}).get("budget")
    if budget:
        config["ranks"]["rank_multiple"] = 96  # 40 sensitivity probes, not 328 (tests/test_sensitivity.py)
    if steps or budget:
        config_file = tmp_path / name
        config_file.write_text(yaml.safe_dump(config))
    python_m("espnet_lowrank.bin.compress", "--asr_train_config", dense_exp / "config.yaml",
             "--asr_model_file", dense_exp / "model.pth", "--lowrank_config", config_file,
             "--calib_data", calib, "--num_calib", "4", "--output_dir", out, timeout=1800)
    report = json.loads((out / "report.json").read_text())
    kept = report["encoder_linear_params_compressed"] / report["encoder_linear_params_dense"]
    assert 0.6 < kept < 0.9, kept
    assert yaml.safe_load((out / "config.yaml").read_text())["encoder_conf"]["plan"]
    assert yaml.safe_load((out / "config.yaml").read_text())["encoder"] == "lowrank"
    assert report.get("recovery_steps", 0) == steps
    if config.get("deployment", {}).get("int8_smoothing"):
        # the candidate kept is the one with the lowest int8 error on windows its ranges did not see
        smoothing = report["int8_smoothing"]
        errors = smoothing["int8_error"]
        assert set(errors) == {"none", "norms", "activations", "both"}
        assert errors[smoothing["chosen"]] == min(errors.values()) < 0.2, smoothing
        assert smoothing["error_windows_held_out"], smoothing
        scales = yaml.safe_load((out / "config.yaml").read_text())["encoder_conf"].get("activation_scales")
        assert bool(scales) == (smoothing["chosen"] in ("activations", "both")), (scales, smoothing)
