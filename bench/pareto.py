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
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet_lowrank.audio import load_audio  # noqa: E402
from espnet_lowrank.config import LowRankConfig  # noqa: E402
from espnet_lowrank.data import read_data_dir  # noqa: E402
from espnet_lowrank.measure import (  # noqa: E402
    encoder_flops,
    encoder_linear_params,
    encoder_mb,
    paired_latency,
)
from espnet_lowrank.pipeline import calibrate_model, compress  # noqa: E402
from espnet_lowrank.quantize import quantize_linears_  # noqa: E402
from espnet_lowrank.scoring import score_texts  # noqa: E402
from espnet_lowrank.utils import atomic_write, atomic_write_text  # noqa: E402

CALIB_SET = "librispeech_train-clean-100"
WINDOW = 30.0


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


def calibration_pool(librispeech: list, data: str, num_calib: int, calib_extra, n_max: int,
                     num_eval: int = 0):
    """The first ``num_calib`` of ``librispeech`` (read once by the caller), then
    (with ``calib_extra``) the utterances of those sets in turn; at least ``n_max``.
    LibriSpeech itself may be an extra set: its utterances after the ``num_eval``
    evaluation ones that follow the first ``num_calib``."""
    pool = librispeech
    if calib_extra:
        extra = [librispeech[num_calib + num_eval:] if s == CALIB_SET else read_data_dir(os.path.join(data, s))
                 for s in calib_extra]
        pool = pool[:num_calib] + [u for row in itertools.zip_longest(*extra) for u in row if u is not None]
        if n_max > len(pool):
            raise SystemExit(f"a config asks for {n_max} calibration utterances; "
                             f"--num_calib {num_calib} + --calib_extra give {len(pool)}")
    return pool


def dense_exp_dir(model: str, work_dir: str) -> Path:
    if os.path.isdir(model):
        return Path(model)
    from espnet_lowrank.whisper.export import export_whisper

    out = Path(work_dir) / f"whisper_{model}"
    if not (out / "model.pth").is_file():
        export_whisper(model, str(out))
    return out


def decode_wer(s2t, eval_sets, hyp_dir=None):
    """Corpus WER per set; with ``hyp_dir``, also writes each set's hypotheses
    (Kaldi ``text`` format) and returns sub/del/ins so hallucinations show."""
    rows, detail = {}, {}
    for name, utts in eval_sets.items():
        refs = {u.utt_id: u.text for u in utts}
        hyps = {}
        with torch.no_grad():
            for u in utts:
                hyps[u.utt_id] = s2t(load_audio(u.wav_path))[0][0]
        score = score_texts(refs, hyps, dataset=name, normalize="whisper")
        rows[name] = score.err
        detail[name] = {"sub": score.sub, "del": score.dele, "ins": score.ins, "s_err": score.s_err}
        if hyp_dir is not None:
            os.makedirs(hyp_dir, exist_ok=True)
            Path(hyp_dir, f"{name}.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(hyps.items())))
    return rows, detail


def plot(rows, sets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [("params_M", "encoder linear params (M)"), ("gflops", "encoder GFLOPs / 30 s"),
          ("latency_ms", "CPU encoder latency (ms)")]
    fig, axes = plt.subplots(len(sets), 3, figsize=(15, 4 * len(sets)), squeeze=False)
    styles = {"dense": ("k", "*"), "liteasr": ("tab:blue", "o"), "budget": ("tab:orange", "s"),
              "sequential": ("tab:green", "^"),
              # rows of the removed least-squares refit, for --replot of older results
              "sequential+refit_all": ("tab:red", "v"),
              "sequential+refit_no_qk": ("tab:purple", "D"), "config": ("tab:brown", "P")}
    for i, s in enumerate(sets):
        for j, (key, label) in enumerate(xs):
            ax = axes[i][j]
            for kind, (color, marker) in styles.items():
                for int8 in (False, True):
                    pts = sorted((r[key], r["wer"][s]) for r in rows if r["kind"] == kind and r["int8"] == int8)
                    if not pts:
                        continue
                    # "config" rows are unrelated YAMLs: points, not a curve
                    line = "none" if kind == "config" else ("--" if int8 else "-")
                    ax.plot(*zip(*pts), color=color, marker=marker, linestyle=line,
                            mfc="none" if int8 else color, label=f"{kind}{' +int8' if int8 else ''}")
            for r in rows:
                ax.annotate(r["name"].replace("liteasr_", "θ").replace("budget_", "b"),
                            (r[key], r["wer"][s]), fontsize=6)
            ax.set_xlabel(label)
            ax.set_ylabel(f"WER % ({s})")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _wer_cell(r, s) -> str:
    if "wer_detail" not in r:
        return f"{r['wer'][s]:.1f}"
    d = r["wer_detail"][s]
    return f"{r['wer'][s]:.1f} ({d['sub']:.1f} / {d['del']:.1f} / {d['ins']:.1f})"


def markdown(rows, sets, meta) -> str:
    head = ["name", "int8"] + [f"WER {s} (S / D / I)" for s in sets] + [
        "enc lin params", "params %", "GFLOPs", "latency ms", "lat_ratio", "enc MB", "compress s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense = rows[0]
    for r in rows:
        cs = r.get("compress_s")
        cells = [r["name"], "yes" if r["int8"] else ""] + [_wer_cell(r, s) for s in sets] + [
            f"{r['params']:,}", f"{100 * r['params'] / dense['params']:.1f}", f"{r['gflops']:.2f}",
            f"{r['latency_ms']:.0f}", f"{r['lat_ratio']:.2f}", f"{r['enc_mb']:.1f}",
            "" if cs is None else f"{cs:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + meta + "\n"


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.replot:
        saved = json.loads(Path(args.out_dir, "pareto.json").read_text())
        save_tables(args.out_dir, "pareto", saved["rows"], list(saved["rows"][0]["wer"]), saved["meta"],
                    markdown, plot)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from espnet2.bin.asr_inference import Speech2Text

    os.makedirs(args.out_dir, exist_ok=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="pareto_")
    exp = dense_exp_dir(args.model, work)
    decode = yaml.safe_load((exp / "decode.yaml").read_text())
    s2t = Speech2Text(str(exp / "config.yaml"), str(exp / "model.pth"), device="cpu", **decode)
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
    eval_sets = {}
    for s in args.sets:
        utts = librispeech if s == CALIB_SET else read_data_dir(os.path.join(args.data, s), require_text=True)
        start = eval_start if s == CALIB_SET else 0
        eval_sets[s] = utts[start: start + args.num_eval]
    calib_ids = {u.utt_id for u in calib_all[:n_calib_max]}
    assert not any(u.utt_id in calib_ids for us in eval_sets.values() for u in us)

    started = time.time()
    t0 = time.perf_counter()
    stats = calibrate_model(dense, calib, LowRankConfig())
    stats_s = time.perf_counter() - t0
    configs = [("dense", "dense", None)]
    for pair in args.thetas:
        ta, tf = (float(x) for x in pair.split(","))
        configs.append((f"liteasr_{ta}_{tf}", "liteasr", LowRankConfig(theta_attention=ta, theta_feed_forward=tf)))
    for b in args.budgets:
        configs.append((f"budget_{b}", "budget", LowRankConfig(budget=b)))
    for pair in args.sequential_thetas:
        ta, tf = (float(x) for x in pair.split(","))
        configs.append((f"sequential_{ta}_{tf}", "sequential",
                        LowRankConfig(theta_attention=ta, theta_feed_forward=tf, sequential=True,
                                      num_calib=args.num_calib)))

    for path, cfg in yaml_cfgs:
        if cfg.calibration.num_calib is None:
            cfg = cfg.replace(num_calib=args.num_calib)
        configs.append((Path(path).stem, "config", cfg))

    rows = []

    def measure(name, kind, model, int8, float_model, compress_s=None, report=None):
        s2t.asr_model = model
        wer, detail = decode_wer(s2t, eval_sets, os.path.join(args.out_dir, "hyps", name + ("_int8" if int8 else "")))
        d_ms, c_ms = paired_latency(dense, model, WINDOW, repeats=args.repeats)
        row = {
            "name": name, "kind": kind, "int8": int8, "wer": wer, "wer_detail": detail,
            "params": encoder_linear_params(float_model),
            "gflops": encoder_flops(float_model, WINDOW) / 1e9,
            "latency_ms": 1000 * c_ms, "lat_ratio": c_ms / d_ms, "enc_mb": encoder_mb(model),
            "compress_s": compress_s,
        }
        row["params_M"] = row["params"] / 1e6
        if report:  # what recovery did (the step its kept factors are from) and each step's cost
            row["recovery"] = {k: v for k, v in report.items() if k.startswith("recovery")}
            row["steps"] = report.get("steps")
        rows.append(row)
        print(f"{name}{' +int8' if int8 else ''}: WER {wer}, params {row['params']:,}, "
              f"{row['gflops']:.2f} GFLOPs, {row['latency_ms']:.0f} ms ({row['lat_ratio']:.2f}x), "
              f"{row['enc_mb']:.1f} MB  [{time.time() - started:.0f}s]", flush=True)

    for name, kind, cfg in configs:
        compress_s, report = None, None
        if cfg is None:
            model = dense
        else:
            t0 = time.perf_counter()
            c = cfg.calibration
            # the shared statistics are one unpacked pass over --num_calib utterances;
            # a budget also measures sensitivity on the audio
            if (c.sequential or cfg.recovery.steps or c.pack_seconds or c.num_calib != args.num_calib
                    or cfg.ranks.budget is not None):
                result = compress(dense, calib_all[: cfg.calibration.num_calib or args.num_calib], cfg)
                compress_s = time.perf_counter() - t0
            else:
                result = compress(dense, config=cfg, stats=stats)
                compress_s = time.perf_counter() - t0 + stats_s  # the shared calibration pass counts
            model, report = result.model, result.report
        measure(name, kind, model, False, model, compress_s, report)
        if name in args.int8:
            q = copy.deepcopy(model)
            t0 = time.perf_counter()
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
    save_tables(args.out_dir, "pareto", rows, list(eval_sets), meta, markdown, plot)


def save_tables(out_dir, stem, rows, sets, meta, to_markdown, to_png):
    """``stem``.md, .json and .png in ``out_dir`` (each written whole or not at
    all); the markdown is also printed."""
    md = to_markdown(rows, sets, meta)
    atomic_write_text(os.path.join(out_dir, f"{stem}.md"), md)
    atomic_write_text(os.path.join(out_dir, f"{stem}.json"), json.dumps({"rows": rows, "meta": meta}, indent=2))
    atomic_write(os.path.join(out_dir, f"{stem}.png"), lambda tmp: to_png(rows, sets, tmp))
    print(md)


if __name__ == "__main__":
    main()
