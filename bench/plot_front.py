#!/usr/bin/env python3
"""WER against encoder linear params (% of dense) across several pareto runs
on the same evaluation utterances: one panel per set, one point per row,
rows that repeat across runs (dense, LiteASR mode) drawn once.

    python bench/plot_front.py --out bench/results/front_tiny.en.png \\
        bench/results/pareto_tiny.en_decoder_objective bench/results/pareto_tiny.en_block_final ...
"""

import argparse

from espnet_lowrank.eval.plots import front_plot, front_rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pareto.py --out_dir folders (each with pareto.json)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    rows = front_rows(args.runs)
    front_plot(rows, args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
