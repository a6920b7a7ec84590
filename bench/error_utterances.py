#!/usr/bin/env python
"""Where compressed rows lose words against their dense row, across runs: per
speaker (the set's ``utt2spk``), and the utterances that get worse in most
rows, with the reference and both hypotheses. A gap made of the same
utterances in every run is systematic; one spread over different utterances
in each run is the runs' noise. Each row is paired with ``--against`` of its
own run (``<run>/hyps/<against>``); Whisper's English normalizer.

    python bench/error_utterances.py --set vctk \\
        bench/results/heldout_base_rerun_pinned/hyps/whisper_base_best_pinned \\
        bench/results/heldout_base_speed/hyps/base_seq_budget0.645_...speed0.9-1.1
"""

import argparse
import os
from collections import Counter

from espnet_lowrank.eval.hyps import row_errors
from espnet_lowrank.scoring import read_text_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help="row folders, <run>/hyps/<row>")
    p.add_argument("--set", required=True, help="the evaluation set (a folder under --data)")
    p.add_argument("--against", default="dense", help="the row of each run to pair with")
    p.add_argument("--top", type=int, default=10, help="utterances listed")
    p.add_argument("--data", default=os.path.join(os.path.dirname(REPO), "shared", "data"))
    args = p.parse_args(argv)
    runs = [row_errors(f, args.against, args.set, args.data) for f in args.rows]
    first = runs[0]
    refs, base, words = first.refs, first.base_errors, first.words
    if any(r.base_errors != base for r in runs[1:]):
        print(f"note: the {args.against} rows differ between runs; each row is paired with its own")
    utt2spk = read_text_file(os.path.join(args.data, args.set, "utt2spk"))
    speakers = sorted({utt2spk.get(u, u) for u in refs})
    print(f"{args.set}: {len(refs)} utterances, {sum(words.values())} words, {len(runs)} rows; "
          f"word errors per speaker ({args.against}; then each row):")
    for s in speakers:
        ids = [u for u in refs if utt2spk.get(u, u) == s]
        print(f"  {s}: {len(ids)} utts, {sum(words[u] for u in ids)} words; {args.against} "
              f"{sum(base[u] for u in ids)}; rows {[sum(r.errors[u] for u in ids) for r in runs]}")
    extra = [sum(r.errors.values()) - sum(r.base_errors.values()) for r in runs]
    print(f"errors over {args.against}, per row: {extra}")
    worse = Counter(u for r in runs for u in refs if r.errors[u] > r.base_errors[u])
    better = Counter(u for r in runs for u in refs if r.errors[u] < r.base_errors[u])
    top = sorted(worse, key=lambda u: (-worse[u], u))[: args.top]
    print(f"utterances worse than {args.against} in the most rows (of {len(runs)}):")
    for u in top:
        print(f"  {u} ({utt2spk.get(u, u)}): worse in {worse[u]}, errors {args.against} {base[u]}, "
              f"rows {[r.errors[u] for r in runs]}\n    ref:  {refs[u]}"
              f"\n    {args.against}: {first.base_hyps[u].strip()}\n    row 1: {first.hyps[u].strip()}")
    share = [sum(r.errors[u] - r.base_errors[u] for u in top) for r in runs]
    print(f"these {len(top)} utterances' errors over {args.against}, per row: {share} (of {extra})")
    print(f"better than {args.against} in the most rows: "
          + ", ".join(f"{u} ({n})" for u, n in sorted(better.items(), key=lambda x: (-x[1], x[0]))[: args.top]))


if __name__ == "__main__":
    main()
