#!/usr/bin/env python3
"""WER against size / FLOPs / CPU latency for Whisper: dense, LiteASR mode at
several θ pairs, the global budget allocator at several budgets, and int8 on
top — all measured in one run on the same held-out real speech.

    python bench/pareto.py --model tiny.en --out_dir bench/results/pareto_tiny.en \\
        [--num_calib 32] [--num_eval 16] [--sets librispeech_train-clean-100 vctk] \\
        [--thetas 0.99,0.999 0.98,0.995 0.97,0.99] [--budgets 0.85 0.75 0.65] \\
        [--int8 liteasr_0.98_0.995 budget_0.75] [--sequential_thetas 0.98,0.995] \\
        [--configs bench/configs/*.yaml]

Calibration: the first ``--num_calib`` utterances of
``librispeech_train-clean-100``; evaluation: the next ``--num_eval`` of it
(never overlapping) plus the first ``--num_eval`` of each other set. A config
that sets a larger ``num_calib`` takes more LibriSpeech utterances (evaluation
then starts after them), or with ``--calib_extra SET ...`` the extra ones from
those sets, in turn, so that the evaluation utterances stay the same
(LibriSpeech itself as an extra set: its utterances after the evaluation ones). Decoding
is in-process with ``espnet2.bin.asr_inference.Speech2Text`` and the exp dir's
decode.yaml (Whisper: greedy, beam 1); ``s2t.asr_model`` is swapped for each
compressed model. WER: corpus WER with Whisper's English normalizer
(``espnet_lowrank.scoring.score_texts(..., normalize="whisper")``).

Columns: encoder linear params (``measure.encoder_linear_params``), encoder
FLOPs for one 30 s window (``measure.encoder_flops``; int8 rows show the float
model's FLOPs: the counter does not see quantized kernels), CPU encoder
latency (median of ``--repeats`` calls on one 30 s window, paired with the
dense model via ``measure.paired_latency``; ``lat_ratio`` is from the pairing),
encoder size on disk (``torch.save`` of the encoder's state dict as it runs:
float, or packed int8). Writes ``pareto.md``, ``pareto.json`` and
``pareto.png`` into ``--out_dir``.
"""

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.decode import load_speech2text
from espnet_lowrank.eval.pareto import WINDOW, compress_row, measure_row, row_configs
from espnet_lowrank.eval.plots import pareto_plot
from espnet_lowrank.eval.pool import CALIB_SET, calibration_pool, dense_exp_dir, first_utterances
from espnet_lowrank.eval.tables import pareto_markdown, save_tables
from espnet_lowrank.pipeline import calibrate_model
from espnet_lowrank.quantize import quantize_linears_

REPO = Path(__file__).resolve().parents[1]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en", help="Whisper name (tiny.en, base) or a dense exp dir")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--sets", nargs="+", default=[CALIB_SET, "vctk"])
    p.add_argument("--num_calib", type=int, default=32)
    p.add_argument("--num_eval", type=int, default=16)
    p.add_argument("--calib_extra", nargs="*", default=[],
                   help="sets that supply calibration utterances beyond --num_calib, taken from "
                        "each in turn; never an evaluation set, except LibriSpeech, whose "
                        "utterances after the evaluation ones are used")
    p.add_argument("--thetas", nargs="*", default=["0.99,0.999", "0.98,0.995", "0.97,0.99"],
                   help="LiteASR θ pairs attention,feed_forward")
    p.add_argument("--budgets", nargs="*", type=float, default=[0.85, 0.75, 0.65])
    p.add_argument("--sequential_thetas", nargs="*", default=[],
                   help="θ pairs for sequential (layer-group by layer-group) calibration")
    p.add_argument("--configs", nargs="*", default=[],
                   help="low-rank config YAMLs, one row each, named by file stem (e.g. with "
                        "recovery_steps)")
    p.add_argument("--int8", nargs="*", default=["dense", "liteasr_0.98_0.995", "budget_0.75"],
                   help="rows to also run with int8 (names as in the table; 'dense' too)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work_dir", default=None, help="where the dense export goes (default: a temp dir)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--replot", action="store_true",
                   help="only redraw pareto.png and pareto.md from --out_dir's pareto.json")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.replot:
        saved = json.loads(Path(args.out_dir, "pareto.json").read_text())
        save_tables(args.out_dir, "pareto", saved["rows"], list(saved["rows"][0]["wer"]), saved["meta"],
                    pareto_markdown, pareto_plot)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="pareto_")
    exp = dense_exp_dir(args.model, work)
    s2t = load_speech2text(exp)
    dense = s2t.asr_model.eval()

    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET), require_text=True)
    calib = librispeech[: args.num_calib]
    # a config YAML that sets calibration.num_calib keeps it (more calibration /
    # recovery audio); evaluation then starts after the largest calibration set,
    # or the extra utterances come from --calib_extra
    yaml_cfgs = [(path, LowRankConfig.from_yaml(path)) for path in args.configs]
    n_calib_max = max([args.num_calib] + [c.calibration.num_calib or 0 for _, c in yaml_cfgs])
    eval_start = n_calib_max
    if args.calib_extra:
        if (set(args.calib_extra) - {CALIB_SET}) & set(args.sets):
            raise SystemExit(f"--calib_extra {args.calib_extra} overlaps the evaluation sets {args.sets}")
        eval_start = args.num_calib
    calib_all = calibration_pool(librispeech, args.data, args.num_calib, args.calib_extra, n_calib_max,
                                 args.num_eval)
    eval_sets = first_utterances(librispeech, args.data, args.sets, eval_start, args.num_eval)
    calib_ids = {u.utt_id for u in calib_all[:n_calib_max]}
    assert not any(u.utt_id in calib_ids for us in eval_sets.values() for u in us)

    started = time.time()
    t0 = time.perf_counter()
    stats = calibrate_model(dense, calib, LowRankConfig())
    stats_s = time.perf_counter() - t0
    configs = row_configs(args.thetas, args.budgets, args.sequential_thetas,
                          [(Path(path).stem, cfg) for path, cfg in yaml_cfgs], args.num_calib)
    rows = []

    def measure(name, kind, model, int8, float_model, compress_s=None, report=None):
        hyp_dir = os.path.join(args.out_dir, "hyps", name + ("_int8" if int8 else ""))
        row = {"name": name, "kind": kind, "int8": int8,
               **measure_row(s2t, dense, model, float_model, eval_sets, hyp_dir, args.repeats),
               "compress_s": compress_s}
        row["params_M"] = row["params"] / 1e6
        if report:  # what recovery did (the step its kept factors are from) and each step's cost
            row["recovery"] = {k: v for k, v in report.items() if k.startswith("recovery")}
            row["steps"] = report.get("steps")
        rows.append(row)
        print(f"{name}{' +int8' if int8 else ''}: WER {row['wer']}, params {row['params']:,}, "
              f"{row['gflops']:.2f} GFLOPs, {row['latency_ms']:.0f} ms ({row['lat_ratio']:.2f}x), "
              f"{row['enc_mb']:.1f} MB  [{time.time() - started:.0f}s]", flush=True)

    for name, kind, cfg in configs:
        compress_s, report = None, None
        if cfg is None:
            model = dense
        else:
            model, compress_s, report = compress_row(dense, cfg, calib_all, args.num_calib, stats, stats_s)
        measure(name, kind, model, False, model, compress_s, report)
        if name in args.int8:
            q = copy.deepcopy(model)
            t0 = time.perf_counter()  # the copy is not part of the cost
            quantize_linears_(q.encoder)
            q_s = None if compress_s is None else compress_s + time.perf_counter() - t0
            measure(name, kind, q.eval(), True, model, q_s, report)
    s2t.asr_model = dense

    meta = (
        f"Model `{args.model}`; calibration: first {args.num_calib} utterances of `{CALIB_SET}` "
        f"(configs that set num_calib: their own count"
        + (f", the rest from {', '.join(args.calib_extra)} in turn" if args.calib_extra else "")
        + f"; evaluation starts after {eval_start}); "
        f"evaluation: " + ", ".join(f"`{s}` ({len(u)} utts)" for s, u in eval_sets.items())
        + f"; greedy decode (decode.yaml); latency: one {WINDOW:.0f} s window, median of "
        f"{args.repeats}, {torch.get_num_threads()} threads; run took {time.time() - started:.0f} s."
    )
    save_tables(args.out_dir, "pareto", rows, list(eval_sets), meta, pareto_markdown, pareto_plot)


if __name__ == "__main__":
    main()
