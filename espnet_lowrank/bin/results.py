#!/usr/bin/env python3
"""Stage 13: score decoded test sets and write an ESPnet-style RESULTS.md.

    python -m espnet_lowrank.bin.results --exps exp/dense exp/dense_lowrank \\
        --test_sets data/test [data/other ...] --output RESULTS.md

The first exp dir is the dense reference; each holds ``decode_<set>/1best_recog/text``. Size and
FLOPs come from the models themselves; every model's encoder latency is measured in this run,
alternating with the dense one.
"""

import argparse
import shlex
import sys
from typing import List, Optional

from espnet_lowrank.results import write_results


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exps", nargs="+", required=True, help="exp dirs; the first is the dense reference")
    parser.add_argument("--test_sets", nargs="+", required=True, help="Kaldi-style data dirs with text")
    parser.add_argument("--normalize", default="whisper", choices=["whisper", "basic", "none"])
    parser.add_argument("--latency_seconds", type=float, default=None,
                        help="input length for latency (default: the family's FLOPs window)")
    parser.add_argument("--latency_repeats", type=int, default=5)
    parser.add_argument("--output", default="RESULTS.md")
    parser.add_argument("--plot", default=None, help="WER-vs-size PNG (default: next to --output)")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    command = "python -m espnet_lowrank.bin.results " + shlex.join(sys.argv[1:] if cmd is None else cmd)
    print(write_results(args.exps, args.test_sets, args.output, normalize=args.normalize,
                        latency_seconds=args.latency_seconds, latency_repeats=args.latency_repeats,
                        plot=args.plot, command=command))


if __name__ == "__main__":
    main()
