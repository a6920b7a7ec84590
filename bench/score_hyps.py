#!/usr/bin/env python
"""Rescore the hypotheses a bench/pareto.py or bench/heldout_eval.py run kept
(``<out_dir>/hyps/<row>/<set>.txt``) against ``../shared/data/<set>/text``:
WER (S / D / I), Whisper's English normalizer. With ``--against ROW`` each
row also gets its WER difference to ROW with a 95% paired-bootstrap interval
(for instance int8 on top of a config against the config alone).
``--against_run`` takes ROW from an earlier run instead (same sets and
utterances); both runs' ``dense`` rows must hold the same hypotheses, so the
two runs decoded alike. Sets that ROW lacks get no Δ.

    python bench/score_hyps.py bench/results/pareto_tiny.en_blockwise dense tiny_seq_block100_lr1e-4
    python bench/score_hyps.py bench/results/heldout_base whisper_base_best_+_int8 --against whisper_base_best
    python bench/score_hyps.py NEW_RUN ROW --against ROW --against_run OLD_RUN
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from espnet_lowrank.scoring import paired_bootstrap, read_text_file, score_texts, utterance_errors  # noqa: E402


def read_row(run, row, data):
    """set -> (refs, hyps) of one row's kept hypotheses."""
    folder = os.path.join(run, "hyps", row)
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: no such row (folders under {run}/hyps: "
                         f"{sorted(os.listdir(os.path.join(run, 'hyps')))})")
    out = {}
    for name in sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt")):
        hyps = read_text_file(os.path.join(folder, f"{name}.txt"))
        out[name] = ({k: v for k, v in read_text_file(os.path.join(data, name, "text")).items() if k in hyps}, hyps)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a bench/pareto.py or bench/heldout_eval.py --out_dir")
    p.add_argument("rows", nargs="+", help="row names (folders under <run>/hyps)")
    p.add_argument("--against", help="a row to compare each row with (paired bootstrap)")
    p.add_argument("--against_run", help="the run dir of --against (default: the same run)")
    p.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared", "data"))
    args = p.parse_args(argv)
    reference = read_row(args.against_run or args.run, args.against, args.data) if args.against else None
    if args.against_run:
        ours, theirs = read_row(args.run, "dense", args.data), read_row(args.against_run, "dense", args.data)
        for name in set(ours) & set(theirs):
            if ours[name][1] != theirs[name][1]:
                raise SystemExit(f"the dense rows of {args.run} and {args.against_run} differ on {name}: "
                                 "the runs did not decode alike, so their rows cannot be paired")
    for row in args.rows:
        cells = []
        for name, (refs, hyps) in read_row(args.run, row, args.data).items():
            s = score_texts(refs, hyps, dataset=name, normalize="whisper")
            cell = f"{name} {s.err:.2f} ({s.sub:.1f} / {s.dele:.1f} / {s.ins:.1f}), {s.snt} utts"
            if reference is not None:
                if name not in reference and not args.against_run:
                    raise SystemExit(f"{args.against} has no hypotheses for {name}")
                if name in reference:
                    if set(reference[name][1]) != set(hyps):
                        raise SystemExit(f"{args.against} and {row} hold different utterances of {name}")
                    d = paired_bootstrap(utterance_errors(*reference[name]), utterance_errors(refs, hyps),
                                         args.samples)
                    cell += f", Δ {args.against} {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]"
            cells.append(cell)
        print(f"{row}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
