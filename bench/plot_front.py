#!/usr/bin/env python3
"""WER against encoder linear params (% of dense) across several pareto runs
on the same evaluation utterances: one panel per set, one point per row,
rows that repeat across runs (dense, LiteASR mode) drawn once.

    python bench/plot_front.py --out bench/results/front_tiny.en.png \\
        bench/results/pareto_tiny.en_decoder_objective bench/results/pareto_tiny.en_block_final ...
"""

import argparse
import json
from pathlib import Path


def load_rows(run_dirs):
    rows, seen = [], set()
    for run in run_dirs:
        for r in json.loads((Path(run) / "pareto.json").read_text())["rows"]:
            key = (r["name"], r["int8"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pareto.py --out_dir folders (each with pareto.json)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load_rows(args.runs)
    dense = next(r for r in rows if r["name"] == "dense" and not r["int8"])
    sets = list(dense["wer"])
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 5), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for r in rows:
            x = 100 * r["params"] / dense["params"]
            marker = "*" if r["kind"] == "dense" else ("o" if r["kind"] == "liteasr" else "P")
            ax.plot(x, r["wer"][s], marker=marker, linestyle="none", mfc="none" if r["int8"] else None)
            label = r["name"].replace("tiny_", "").replace("_lr1e-4", "") + (" +int8" if r["int8"] else "")
            ax.annotate(label, (x, r["wer"][s]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(dense["wer"][s] + 1.0, color="grey", linestyle=":", label="dense + 1.0 (target)")
        ax.set_xlabel("encoder linear params (% of dense)")
        ax.set_ylabel(f"WER % ({s})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
