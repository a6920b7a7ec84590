#!/usr/bin/env python
"""WER of compressed exp dirs on every held-out utterance of several real sets,
with each row's WER difference to dense and a 95% paired-bootstrap interval,
so that a gap of a few words can be told from noise.

    python bench/heldout_eval.py --model tiny.en \\
        --exps /work/scratch/export/whisper_tiny_best --int8 dense whisper_tiny_best \\
        --thetas 0.98,0.995 --sets librispeech_train-clean-100 vctk arctic_cathy_a:100 pocketsphinx \\
        --out_dir bench/results/heldout_tiny.en

Held out: an utterance is never in the calibration pool that bench/pareto.py
and bench/compress_cost.py build (``--num_calib`` LibriSpeech, then
``--calib_extra`` in turn, ``--pool_size`` in all), and its transcript is not
one of the pool's (ARCTIC has several takes of a prompt). ``SET:N`` takes the
first N held-out utterances of a set; otherwise all of them. Each exp dir is
loaded as it is deployed, through ``espnet2.bin.asr_inference.Speech2Text``
with its config.yaml and decode.yaml (greedy). LiteASR mode (``--thetas``) is
compressed here in one pass over the first ``--num_calib`` LibriSpeech
utterances, as in pareto.py. ``--no_loop_guard`` rows are decoded once
more with the Whisper decoder's loop guard off (``loop_repeats: 0``).
Writes ``heldout.md``, ``heldout.json``, ``heldout.png`` and each row's
hypotheses under ``hyps/``.
"""

import argparse
import contextlib
import os
import time
from pathlib import Path

import torch

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.decode import decode_sets, int8_copy, load_speech2text, loop_guard_off, with_model
from espnet_lowrank.eval.plots import heldout_plot
from espnet_lowrank.eval.pool import CALIB_EXTRA, CALIB_SET, calibration_pool, dense_exp_dir, heldout_sets
from espnet_lowrank.eval.tables import heldout_markdown, save_tables
from espnet_lowrank.measure import encoder_linear_params
from espnet_lowrank.pipeline import compress
from espnet_lowrank.scoring import paired_bootstrap

REPO = Path(__file__).resolve().parents[1]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en", help="Whisper name (tiny.en, base) or a dense exp dir")
    p.add_argument("--exps", nargs="*", default=[], help="compressed exp dirs, one row each, named by folder")
    p.add_argument("--int8", nargs="*", default=[], help="rows (dense or an exp's folder name) also run int8")
    p.add_argument("--no_loop_guard", nargs="*", default=[],
                   help="rows (as named in the table, e.g. 'NAME + int8') also decoded with the decoder's loop guard "
                        "off, as 'ROW, no loop guard'")
    p.add_argument("--thetas", nargs="*", default=[], help="LiteASR mode θ pairs attention,feed_forward")
    p.add_argument("--sets", nargs="+", default=[CALIB_SET, "vctk", "arctic_cathy_a:100", "pocketsphinx"])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--num_calib", type=int, default=32)
    p.add_argument("--calib_extra", nargs="*", default=list(CALIB_EXTRA))
    p.add_argument("--pool_size", type=int, default=128, help="calibration utterances the exp dirs used")
    p.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work_dir", default="exp/bench_heldout", help="where the dense export is kept")
    p.add_argument("--out_dir", required=True)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [Path(e).name for e in args.exps]
    for e in args.exps:
        if not (Path(e) / "model.pth").is_file() or not (Path(e) / "config.yaml").is_file():
            raise SystemExit(f"{e}: not an exp dir (needs config.yaml and model.pth)")
    unknown = set(args.int8) - {"dense"} - set(names)
    if unknown:
        raise SystemExit(f"--int8 names rows that are not run: {sorted(unknown)}")
    thetas = [tuple(float(x) for x in pair.split(",")) for pair in args.thetas]
    lite_names = [f"LiteASR mode θ ({ta}, {tf})" for ta, tf in thetas]
    rows_run = ["dense"] + lite_names + names
    rows_run += [f"{n} + int8" for n in rows_run if n in args.int8]
    unknown = set(args.no_loop_guard) - set(rows_run)
    if unknown:
        raise SystemExit(f"--no_loop_guard names rows that are not run: {sorted(unknown)} (rows: {rows_run})")
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.time()

    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET), require_text=True)
    pool = calibration_pool(librispeech, args.data, args.num_calib, args.calib_extra, args.pool_size)
    pool = pool[: args.pool_size]
    eval_sets = heldout_sets(args.data, args.sets, librispeech, pool)

    dense_s2t = load_speech2text(dense_exp_dir(args.model, args.work_dir))
    dense = dense_s2t.asr_model.eval()
    dense_params = encoder_linear_params(dense)
    candidates = [("dense", dense_s2t)]
    for (ta, tf), lite_name in zip(thetas, lite_names):
        cfg = LowRankConfig(theta_attention=ta, theta_feed_forward=tf)
        compressed = compress(dense, librispeech[: args.num_calib], cfg).model.eval()
        candidates.append((lite_name, with_model(dense_s2t, compressed)))  # same tokenizer and decoder
    candidates += [(n, load_speech2text(e)) for n, e in zip(names, args.exps)]

    rows, base_errors = [], None
    for name, s2t in candidates:
        variants = [(name, s2t)]
        if name in args.int8:
            variants.append((f"{name} + int8", with_model(s2t, int8_copy(s2t.asr_model))))
        variants += [(f"{n}, no loop guard", v) for n, v in variants if n in args.no_loop_guard]
        for row_name, v in variants:
            v.asr_model.eval()
            hyp_dir = os.path.join(args.out_dir, "hyps", row_name.replace(" ", "_"))
            unguarded = row_name.endswith(", no loop guard")
            with loop_guard_off(v) if unguarded else contextlib.nullcontext():
                results = decode_sets(v, eval_sets, hyp_dir)
            if base_errors is None:
                base_errors = {s: d.errors for s, d in results.items()}
            row = {"name": row_name, "params_pct": 100.0 * encoder_linear_params(s2t.asr_model) / dense_params,
                   "sets": {}}
            for s, decoded in results.items():
                score, errors = decoded.score, decoded.errors
                delta = None if row_name == "dense" else paired_bootstrap(base_errors[s], errors, args.samples)
                row["sets"][s] = {"err": score.err, "sub": score.sub, "del": score.dele, "ins": score.ins,
                                  "utts": score.snt, "words": score.wrd, "delta": delta}
            rows.append(row)
            print(f"{row_name}: " + ", ".join(f"{s} {w['err']:.2f}" + (f" ({w['delta'][0]:+.2f})" if w["delta"] else "")
                                             for s, w in row["sets"].items()) + f"  [{time.time() - started:.0f}s]",
                  flush=True)

    sets = list(eval_sets)
    meta = (f"Model `{args.model}`; held out from a {len(pool)}-utterance calibration pool (first {args.num_calib} "
            f"of `{CALIB_SET}`, then {', '.join(args.calib_extra)} in turn), by id and by transcript; evaluation: "
            + ", ".join(f"`{s}` ({len(u)} utts, {rows[0]['sets'][s]['words']} words)" for s, u in eval_sets.items())
            + f"; greedy decode (decode.yaml), Whisper normalizer; Δ dense: absolute WER points, 95% interval from "
            f"{args.samples} paired bootstrap resamples of utterances; {args.threads} threads; "
            f"run took {time.time() - started:.0f} s.")
    save_tables(args.out_dir, "heldout", rows, sets, meta, heldout_markdown, heldout_plot)


if __name__ == "__main__":
    main()
