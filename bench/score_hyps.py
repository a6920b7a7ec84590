#!/usr/bin/env python
"""Rescore the hypotheses a bench/pareto.py or bench/heldout_eval.py run kept
(``<out_dir>/hyps/<row>/<set>.txt``) against ``../shared/data/<set>/text``:
WER (S / D / I), Whisper's English normalizer. With ``--against ROW`` each
row also gets its WER difference to ROW with a 95% paired-bootstrap interval
(for instance int8 on top of a config against the config alone).
``--against_run`` takes ROW from an earlier run instead (same sets and
utterances); both runs' ``dense`` rows must hold the same hypotheses, so the
two runs decoded alike. Sets that ROW lacks get no Δ. ``--loop_guard MODEL``
rescores every hypothesis as the Whisper decoder's loop guard (its defaults)
would have ended it in greedy decoding: re-tokenized with MODEL's
tokenizer and cut after the first prefix that ends in a loop. That equals
decoding with the guard whenever the text re-tokenizes to the decoded tokens.

    python bench/score_hyps.py bench/results/pareto_tiny.en_blockwise dense tiny_seq_block100_lr1e-4
    python bench/score_hyps.py bench/results/heldout_base whisper_base_best_+_int8 --against whisper_base_best
    python bench/score_hyps.py NEW_RUN ROW --against ROW --against_run OLD_RUN
    python bench/score_hyps.py bench/results/heldout_tiny.en dense whisper_tiny_best --loop_guard tiny.en
"""

import argparse
import os

from espnet_lowrank.eval.hyps import loop_cutter, read_row
from espnet_lowrank.eval.tables import delta, sdi
from espnet_lowrank.scoring import paired_bootstrap, score_texts, utterance_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a bench/pareto.py or bench/heldout_eval.py --out_dir")
    p.add_argument("rows", nargs="+", help="row names (folders under <run>/hyps)")
    p.add_argument("--against", help="a row to compare each row with (paired bootstrap)")
    p.add_argument("--against_run", help="the run dir of --against (default: the same run)")
    p.add_argument("--loop_guard", metavar="MODEL",
                   help="rescore as the decoder's loop guard would have cut greedy decoding (tiny.en, base, ...)")
    p.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared", "data"))
    args = p.parse_args(argv)
    cut = loop_cutter(args.loop_guard) if args.loop_guard else None
    reference = read_row(args.against_run or args.run, args.against, args.data, cut) if args.against else None
    if args.against_run:
        ours, theirs = read_row(args.run, "dense", args.data), read_row(args.against_run, "dense", args.data)
        for name in set(ours) & set(theirs):
            if ours[name][1] != theirs[name][1]:
                raise SystemExit(f"the dense rows of {args.run} and {args.against_run} differ on {name}: "
                                 "the runs did not decode alike, so their rows cannot be paired")
    for row in args.rows:
        cells = []
        for name, (refs, hyps, n_cut) in read_row(args.run, row, args.data, cut).items():
            s = score_texts(refs, hyps, dataset=name, normalize="whisper")
            cell = f"{name} {sdi(s.err, s.sub, s.dele, s.ins)}, {s.snt} utts"
            if cut is not None:
                cell += f", {n_cut} cut"
            if reference is not None:
                if name not in reference and not args.against_run:
                    raise SystemExit(f"{args.against} has no hypotheses for {name}")
                if name in reference:
                    if set(reference[name][1]) != set(hyps):
                        raise SystemExit(f"{args.against} and {row} hold different utterances of {name}")
                    d = paired_bootstrap(utterance_errors(*reference[name][:2]), utterance_errors(refs, hyps),
                                         args.samples)
                    cell += f", Δ {args.against} {delta(d)}"
            cells.append(cell)
        print(f"{row}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
