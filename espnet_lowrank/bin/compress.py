#!/usr/bin/env python3
"""Compress a trained ESPnet ASR model into a new exp dir.

    python -m espnet_lowrank.bin.compress \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/model.pth \\
        --calib_data data/train --output_dir exp/asr_lowrank [--lowrank_config conf/lowrank/x.yaml]

Writes config.yaml (``encoder: lowrank`` + the plan), model.pth, decode.yaml,
report.json, report.md, and PNGs of the variance spectra and ranks. The
output is written atomically and reloaded with a strict key check.

Split calibration: ``--nj 4 [--backend slurm]`` runs 4 calibration jobs on
batch-aligned parts (in OUTPUT_DIR.calib/, removed on success; a rerun reuses
the parts that finished) and merges their statistics. By hand: ``--stats_out
part.N.pt`` per job (each on its own ``--calib_data``), then ``--stats part.*.pt``.
"""

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from espnet_lowrank.api import save_compressed
from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.calibration import StatsSet
from espnet_lowrank.compress import calibrate_model, compress
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.families import family_for
from espnet_lowrank.jobs import BACKENDS, split_calibration
from espnet_lowrank.report import compression_report_md

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "lowrank"


def default_config_path(family_name: str) -> Path:
    path = CONF_DIR / f"{family_name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no default low-rank config for family {family_name!r} at {path}; "
            "pass --lowrank_config"
        )
    return path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--asr_train_config", required=True, help="dense model's config.yaml")
    parser.add_argument("--asr_model_file", required=True, help="dense model's *.pth")
    parser.add_argument("--calib_data", help="Kaldi-style data dir for calibration (wav.scp)")
    parser.add_argument("--lowrank_config", help="method YAML; default: conf/lowrank/<family>.yaml")
    parser.add_argument("--num_calib", type=int, help="use at most N calibration utterances")
    parser.add_argument("--output_dir", help="new exp dir to write")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--stats_out", help="only calibrate, and save the statistics here")
    parser.add_argument("--stats", nargs="+", help="statistics files to merge instead of calibrating")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dir")
    parser.add_argument("--nj", type=int, default=1, help="split calibration over N jobs, then merge")
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="where the --nj jobs run")
    parser.add_argument("--slurm_options", default="", help='extra sbatch options, e.g. "-p cpu --mem 8G"')
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.stats_out and not args.output_dir:
        sys.exit("error: --output_dir is required (or --stats_out for a calibration-only job)")
    if not args.stats and not args.calib_data:
        sys.exit("error: --calib_data is required unless --stats is given")
    if args.nj < 1:
        sys.exit(f"error: --nj must be >= 1, got {args.nj}")

    out = args.output_dir
    if out and os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise FileExistsError(f"output directory {out} exists and is not empty (use --overwrite)")

    # 1. Load the dense model, with the strict key check.
    model, train_config = load_asr_model(args.asr_train_config, args.asr_model_file, args.device)
    family = family_for(model.encoder)

    # 2. The method config: explicit, or the family's default.
    config_path = args.lowrank_config or str(default_config_path(family.name))
    config = LowRankConfig.from_yaml(config_path)
    if args.num_calib is not None:
        config.num_calib = args.num_calib
        config.__post_init__()

    # 3. Calibration only: save statistics for a later merge.
    if args.stats_out:
        calibrate_model(model, args.calib_data, config).save(args.stats_out)
        logging.info("wrote %s", args.stats_out)
        return

    # 4. Compress (calibrating, or from merged statistics).
    split_dir = None
    if (args.nj > 1 or args.backend != "local") and not args.stats:
        split_dir = os.path.abspath(out).rstrip("/") + ".calib"
        job_args = ["--asr_train_config", args.asr_train_config, "--asr_model_file", args.asr_model_file,
                    "--lowrank_config", config_path, "--device", args.device]
        args.stats = split_calibration(job_args, args.calib_data, config, args.nj, split_dir,
                                       args.backend, args.slurm_options)
    stats = StatsSet.merge_files(args.stats) if args.stats else None
    result = compress(model, args.calib_data, config, stats=stats)

    # 5. Write the exp dir atomically and reload it through ESPnet.
    result.report["lowrank_config_file"] = config_path
    save_compressed(
        result,
        train_config,
        args.output_dir,
        source_config_file=args.asr_train_config,
        source_files=(args.asr_train_config, args.asr_model_file),
        overwrite=args.overwrite,
    )
    if split_dir:
        shutil.rmtree(split_dir)  # part statistics are large; the exp dir now holds the result
    print(compression_report_md(result.report).split("## Layers")[0])
    print(f"wrote {os.path.abspath(args.output_dir)}")


if __name__ == "__main__":
    main()
