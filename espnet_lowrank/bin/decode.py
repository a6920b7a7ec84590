#!/usr/bin/env python3
"""Decode a Kaldi-style data dir with the stock ``espnet2.bin.asr_inference``,
split over ``--nj`` jobs, and merge the hypotheses.

    python -m espnet_lowrank.bin.decode --asr_exp exp/x --data data/test \\
        --output_dir exp/x/decode_test [--nj 4] [--backend local|slurm]

Writes OUTPUT_DIR/1best_recog/text (ESPnet's layout) and OUTPUT_DIR/logdir/.
"""

import argparse
import logging
from typing import List, Optional

from espnet_lowrank.decode import decode
from espnet_lowrank.jobs import BACKENDS


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr_exp", required=True, help="exp dir with config.yaml and model.pth")
    parser.add_argument("--data", required=True, help="Kaldi-style data dir")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--nj", type=int, default=1)
    parser.add_argument("--backend", choices=BACKENDS, default="local")
    parser.add_argument("--slurm_options", default="", help='extra sbatch options, e.g. "-p cpu --mem 8G"')
    parser.add_argument("--inference_config", help="default: ASR_EXP/decode.yaml")
    parser.add_argument("--inference_asr_model", help="default: ASR_EXP/model.pth")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    path = decode(args.asr_exp, args.data, args.output_dir, args.nj, args.backend,
                  args.inference_config, args.inference_asr_model, args.slurm_options)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
