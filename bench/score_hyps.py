#!/usr/bin/env python
"""Rescore the hypotheses a bench/pareto.py run kept (``<out_dir>/hyps/<row>/<set>.txt``)
against ``../shared/data/<set>/text``: WER (S / D / I), Whisper's English normalizer.
For runs stopped before pareto.json was written.

    python bench/score_hyps.py bench/results/pareto_tiny.en_blockwise dense tiny_seq_block100_lr1e-4
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from espnet_lowrank.scoring import read_text_file, score_texts  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a bench/pareto.py --out_dir")
    p.add_argument("rows", nargs="+", help="row names (folders under <run>/hyps)")
    p.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared", "data"))
    args = p.parse_args(argv)
    for row in args.rows:
        folder = os.path.join(args.run, "hyps", row)
        cells = []
        for name in sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt")):
            hyps = read_text_file(os.path.join(folder, f"{name}.txt"))
            refs = {k: v for k, v in read_text_file(os.path.join(args.data, name, "text")).items() if k in hyps}
            s = score_texts(refs, hyps, dataset=name, normalize="whisper")
            cells.append(f"{name} {s.err:.1f} ({s.sub:.1f} / {s.dele:.1f} / {s.ins:.1f}), {s.snt} utts")
        print(f"{row}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
