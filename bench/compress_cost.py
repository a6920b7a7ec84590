#!/usr/bin/env python3
"""What one config costs to compress with the stock CLI: wall time and peak
memory in total and per step (report.json's ``steps``), on this machine; also
the recovery loss to every digit and what the arithmetic ran on (report.json's
``runtime``), so that a loop over ``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``,
``DNNL_MAX_CPU_ISA`` and ``OMP_NUM_THREADS`` shows which of them change a
recovery (bench/DECISIONS.md, "what a recovery run depends on").

    python bench/compress_cost.py --config conf/lowrank/whisper_tiny_best.yaml \\
        [--model tiny.en] [--num_calib 32] [--calib_extra arctic_cathy_a an4 ljspeech] \\
        [--work_dir exp/bench_cost] [--out_dir bench/results/cost_whisper_tiny_best]

The calibration utterances are pareto.py's (``--num_calib`` LibriSpeech, then
``--calib_extra`` in turn, as many as the config's ``num_calib``), written as a
Kaldi data dir; ``python -m espnet_lowrank.bin.compress`` then runs on it in a
subprocess (every core, unless OMP_NUM_THREADS says otherwise). Peak RSS of
the whole run is the child's ``ru_maxrss``. Writes ``cost.md`` and
``cost.json`` into ``--out_dir``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir, write_data_dir
from espnet_lowrank.eval.pool import CALIB_EXTRA, CALIB_SET, calibration_pool, dense_exp_dir
from espnet_lowrank.report import runtime_line
from espnet_lowrank.utils import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the low-rank config YAML to time")
    p.add_argument("--model", default="tiny.en", help="Whisper name or a dense exp dir")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--num_calib", type=int, default=32)
    p.add_argument("--calib_extra", nargs="*", default=list(CALIB_EXTRA))
    p.add_argument("--num_eval", type=int, default=60,
                   help="LibriSpeech utterances pareto.py evaluates on, after --num_calib; "
                        "never calibration audio when --calib_extra names LibriSpeech")
    p.add_argument("--work_dir", default="exp/bench_cost", help="dense export and the compressed exp dir")
    p.add_argument("--out_dir", required=True)
    args = p.parse_args(argv)

    config = LowRankConfig.from_yaml(args.config)
    n = config.calibration.num_calib or args.num_calib
    exp = dense_exp_dir(args.model, args.work_dir)
    calib = Path(args.work_dir) / f"calib_{n}"
    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET), require_text=True)
    pool = calibration_pool(librispeech, args.data, args.num_calib, args.calib_extra, n, args.num_eval)
    write_data_dir(str(calib), pool[:n])
    out = Path(args.work_dir) / Path(args.config).stem
    # --overwrite: the CLI's own check refuses an output dir that holds the source model
    cmd = [sys.executable, "-m", "espnet_lowrank.bin.compress", "--asr_train_config", str(exp / "config.yaml"),
           "--asr_model_file", str(exp / "model.pth"), "--lowrank_config", args.config,
           "--calib_data", str(calib), "--output_dir", str(out), "--overwrite"]
    print(" ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=str(REPO))
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    report = json.loads((out / "report.json").read_text())

    rows = [f"| {name} | {s['seconds']:.0f} | {s['peak_rss_mb']:.0f} |" for name, s in report["steps"].items()]
    kept = 100 * report["encoder_linear_params_compressed"] / report["encoder_linear_params_dense"]
    threads = os.environ.get("OMP_NUM_THREADS", "unset, torch uses every core")
    md = "\n".join([
        f"`{args.config}` on `{args.model}`, {n} calibration utterances, {os.cpu_count()} CPUs "
        f"(OMP_NUM_THREADS: {threads}); {kept:.1f} % of the encoder linear params kept.", "",
        "| step | seconds | peak RSS MB |", "|---|---|---|", *rows,
        f"| **whole run** (CLI subprocess, load and save included) | **{wall:.0f}** | **{peak_mb:.0f}** |", "",
        *([f"Recovery loss {report['recovery_loss_before']!r} -> {report['recovery_loss_after']!r} "
           f"(kept step {report['recovery_best_step']})", ""] if "recovery_loss_after" in report else []),
        f"Run on: {runtime_line(report['runtime'])}", ""])
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write_text(os.path.join(args.out_dir, "cost.md"), md)
    atomic_write_text(os.path.join(args.out_dir, "cost.json"), json.dumps(
        {"config": args.config, "model": args.model, "num_calib": n, "cpus": os.cpu_count(),
         "wall_s": wall, "peak_rss_mb": peak_mb, "kept_percent": kept, "steps": report["steps"],
         "runtime": report["runtime"],
         **{k: report[k] for k in ("recovery_loss_before", "recovery_loss_after", "recovery_best_step") if k in report}},
        indent=2))
    print(md)


if __name__ == "__main__":
    main()
