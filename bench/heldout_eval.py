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
import copy
import os
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pareto import CALIB_SET, calibration_pool, dense_exp_dir, save_tables  # noqa: E402

from espnet_lowrank.audio import load_audio  # noqa: E402
from espnet_lowrank.config import LowRankConfig  # noqa: E402
from espnet_lowrank.data import read_data_dir  # noqa: E402
from espnet_lowrank.measure import encoder_linear_params  # noqa: E402
from espnet_lowrank.pipeline import compress  # noqa: E402
from espnet_lowrank.quantize import quantize_linears_  # noqa: E402
from espnet_lowrank.scoring import paired_bootstrap, score_texts, utterance_errors  # noqa: E402


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
    p.add_argument("--calib_extra", nargs="*", default=["arctic_cathy_a", "an4", "ljspeech"])
    p.add_argument("--pool_size", type=int, default=128, help="calibration utterances the exp dirs used")
    p.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work_dir", default="exp/bench_heldout", help="where the dense export is kept")
    p.add_argument("--out_dir", required=True)
    return p


def heldout_sets(data, sets, librispeech, pool):
    """name -> held-out utterances: not in ``pool`` by id or by transcript."""
    ids, texts = {u.utt_id for u in pool}, {u.text for u in pool}
    out = {}
    for spec in sets:
        name, _, n = spec.partition(":")
        if n and not n.isdigit():
            raise SystemExit(f"--sets {spec}: expected SET or SET:N with N a whole number")
        utts = librispeech if name == CALIB_SET else read_data_dir(os.path.join(data, name), require_text=True)
        kept = [u for u in utts if u.utt_id not in ids and u.text not in texts]
        out[name] = kept[: int(n)] if n else kept
        if not out[name]:
            raise SystemExit(f"{name}: no held-out utterances left after the calibration pool")
    return out


def decode(s2t, eval_sets, hyp_dir):
    """Per set: the ScoreRow and id -> (errors, words); hypotheses into hyp_dir."""
    out = {}
    os.makedirs(hyp_dir, exist_ok=True)
    for name, utts in eval_sets.items():
        refs = {u.utt_id: u.text for u in utts}
        with torch.no_grad():
            hyps = {u.utt_id: s2t(load_audio(u.wav_path))[0][0] for u in utts}
        Path(hyp_dir, f"{name}.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(hyps.items())))
        out[name] = (score_texts(refs, hyps, dataset=name, normalize="whisper"), utterance_errors(refs, hyps))
    return out


def markdown(rows, sets, meta):
    head = "| row | params % | " + " | ".join(f"{s}: WER (S / D / I) | Δ dense [95%]" for s in sets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(sets))]
    for r in rows:
        cells = [r["name"], f"{r['params_pct']:.1f}"]
        for s in sets:
            w = r["sets"][s]
            cells.append(f"{w['err']:.2f} ({w['sub']:.1f} / {w['del']:.1f} / {w['ins']:.1f})")
            d = w["delta"]
            cells.append("—" if d is None else f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return meta + "\n\n" + "\n".join(lines) + "\n"


def plot(rows, sets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["sets"][sets[0]]["delta"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(shown) * len(sets) + 1.5))
    y = 0
    labels = []
    for r in shown:
        for s in sets:
            d, lo, hi = r["sets"][s]["delta"]
            ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", capsize=3)
            labels.append(f"{r['name']} / {s}")
            y += 1
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(1.0, color="r", lw=0.8, ls="--", label="+1.0 target")
    ax.set_yticks(range(y), labels, fontsize=7)
    ax.set_xlabel("WER − dense WER (absolute points), 95% paired bootstrap")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from espnet2.bin.asr_inference import Speech2Text

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

    def load(exp):
        decode_kw = yaml.safe_load((Path(exp) / "decode.yaml").read_text())
        return Speech2Text(str(Path(exp) / "config.yaml"), str(Path(exp) / "model.pth"), device="cpu", **decode_kw)

    dense_s2t = load(dense_exp_dir(args.model, args.work_dir))
    dense = dense_s2t.asr_model.eval()
    dense_params = encoder_linear_params(dense)
    candidates = [("dense", dense_s2t)]
    for (ta, tf), lite_name in zip(thetas, lite_names):
        cfg = LowRankConfig(theta_attention=ta, theta_feed_forward=tf)
        s2t = copy.copy(dense_s2t)  # same tokenizer and decoder, compressed asr_model
        s2t.asr_model = compress(dense, librispeech[: args.num_calib], cfg).model.eval()
        candidates.append((lite_name, s2t))
    candidates += [(n, load(e)) for n, e in zip(names, args.exps)]

    rows, base_errors = [], None
    for name, s2t in candidates:
        variants = [(name, s2t)]
        if name in args.int8:
            q = copy.copy(s2t)
            q.asr_model = copy.deepcopy(s2t.asr_model)
            quantize_linears_(q.asr_model.encoder)
            variants.append((f"{name} + int8", q))
        variants += [(f"{n}, no loop guard", v) for n, v in variants if n in args.no_loop_guard]
        for row_name, v in variants:
            v.asr_model.eval()
            guard = v.beam_search.full_scorers.get("decoder")  # the decoder module that beam search calls
            kept = getattr(guard, "loop_repeats", None)
            if row_name.endswith(", no loop guard"):
                if kept is None:
                    raise SystemExit(f"--no_loop_guard: {type(guard).__name__} has no loop guard (Whisper only)")
                guard.loop_repeats = 0
            try:
                results = decode(v, eval_sets, os.path.join(args.out_dir, "hyps", row_name.replace(" ", "_")))
            finally:
                if kept is not None:
                    guard.loop_repeats = kept
            if base_errors is None:
                base_errors = {s: errs for s, (_, errs) in results.items()}
            row = {"name": row_name, "params_pct": 100.0 * encoder_linear_params(s2t.asr_model) / dense_params,
                   "sets": {}}
            for s, (score, errs) in results.items():
                delta = None if row_name == "dense" else paired_bootstrap(base_errors[s], errs, args.samples)
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
    save_tables(args.out_dir, "heldout", rows, sets, meta, markdown, plot)


if __name__ == "__main__":
    main()
