#!/usr/bin/env python3
"""Encoder linear params kept for a grid of θ pairs, from one calibration.

    python local/theta_grid.py exp/asr_train_asr_conformer [--calib_data dump/raw/train] [--num 64]

Calibrates once (``num`` training utterances spread over the sorted set, as stage 12
picks them) and makes a plan for every (θ attention, θ feed-forward) pair from
the same statistics; prints one line per pair. Picks the θ of a target cut.
"""

import argparse
import itertools

from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.pipeline import calibrate_model, compress
from recipe_tools import spread  # local/, next to this script

THETAS_ATTENTION = (0.9, 0.95, 0.97, 0.98, 0.99)
THETAS_FEED_FORWARD = (0.97, 0.98, 0.99, 0.995, 0.999)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exp")
    p.add_argument("--calib_data", default="dump/raw/train")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--rank_multiple", type=int, default=16)
    args = p.parse_args(argv)
    dense, _ = load_asr_model(f"{args.exp}/config.yaml", f"{args.exp}/model.pth")
    utts = spread(read_data_dir(args.calib_data), args.num)
    stats = calibrate_model(dense, utts, LowRankConfig(batch_size=4))
    print("theta_attention theta_feed_forward params_kept")
    for ta, tf in itertools.product(THETAS_ATTENTION, THETAS_FEED_FORWARD):
        config = LowRankConfig(theta_attention=ta, theta_feed_forward=tf,
                               rank_multiple=args.rank_multiple, batch_size=4)
        report = compress(dense, config=config, stats=stats).report
        kept = report["encoder_linear_params_compressed"] / report["encoder_linear_params_dense"]
        print(f"{ta} {tf} {kept:.3f}", flush=True)


if __name__ == "__main__":
    main()
