#!/usr/bin/env python3
"""Compress a trained ESPnet ASR model into a new exp dir.

    python -m espnet_lowrank.bin.compress \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/model.pth \\
        --calib_data data/train --output_dir exp/asr_lowrank [--lowrank_config conf/lowrank/x.yaml]

Writes config.yaml (``encoder: lowrank`` + the plan), model.pth, decode.yaml, report.json,
report.md and PNGs of the variance spectra and ranks, atomically, reloaded with a strict key check.

Split calibration: ``--nj 4 [--backend slurm]`` runs 4 calibration jobs on batch-aligned parts (in
a new .OUTPUT_DIR.calib-XXXX/ beside it, removed on success; a rerun reuses the finished parts) and
merges their statistics. By hand: ``--stats_out part.N.pt`` per job (each on its own
``--calib_data``), then ``--stats part.*.pt``.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from espnet_lowrank.api import save_compressed
from espnet_lowrank.artifact import KeyMismatchError, load_asr_model
from espnet_lowrank.calibration import StatsSet
from espnet_lowrank.conf import default_config_path
from espnet_lowrank.pipeline import calibrate_model, check_config, compress
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.families import family_for
from espnet_lowrank.jobs import BACKENDS, remove_work_dir, split_calibration, work_dir_for
from espnet_lowrank.report import compression_report_md
from espnet_lowrank.utils import OutputWriteError, check_output_dir, sigterm_as_interrupt


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of input errors")
    return parser


def _load_config(path: str, num_calib: Optional[int]) -> LowRankConfig:
    config = LowRankConfig.from_yaml(path)
    return config if num_calib is None else config.replace(num_calib=num_calib)


def main(cmd: Optional[List[str]] = None) -> None:
    """Compress; raises on bad input (``cli`` turns that into one line)."""
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # 1. Every input that can be checked without the model, cheapest first.
    if not args.stats_out and not args.output_dir:
        raise ValueError("--output_dir is required (or --stats_out for a calibration-only job)")
    if not args.stats and not args.calib_data:
        raise ValueError("--calib_data is required unless --stats is given")
    if args.nj < 1:
        raise ValueError(f"--nj must be >= 1, got {args.nj}")
    sources = (args.asr_train_config, args.asr_model_file)
    for path in sources + tuple(args.stats or ()):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file not found: {path}")
    if args.output_dir:
        check_output_dir(args.output_dir, sources, args.overwrite,
                         source_dirs=[os.path.dirname(os.path.abspath(args.asr_model_file))])
    config = _load_config(args.lowrank_config, args.num_calib) if args.lowrank_config else None
    if args.calib_data:
        read_data_dir(args.calib_data)
    # 2. Load the dense model, with the strict key check.
    model, train_config = load_asr_model(args.asr_train_config, args.asr_model_file, args.device)
    family = family_for(model.encoder)
    # 3. The method config: explicit, or the family's default; then the checks that need the model.
    config_path = args.lowrank_config or str(default_config_path(family.name))
    config = config or _load_config(config_path, args.num_calib)
    check_config(model, config)  # the audio is checked by compress
    # 4. Calibration only: save statistics for a later merge.
    if args.stats_out:
        calibrate_model(model, args.calib_data, config).save(args.stats_out)
        logging.info("wrote %s", args.stats_out)
        return
    # 5. Compress (calibrating, or from merged statistics).
    work_dir = None
    if (args.nj > 1 or args.backend != "local") and not args.stats:
        work_dir = work_dir_for(args.output_dir)
        job_args = ["--asr_train_config", args.asr_train_config, "--asr_model_file", args.asr_model_file,
                    "--lowrank_config", config_path, "--device", args.device]
        args.stats = split_calibration(job_args, args.calib_data, config, args.nj, work_dir,
                                       args.backend, args.slurm_options)
    stats = StatsSet.merge_files(args.stats) if args.stats else None
    result = compress(model, args.calib_data, config, stats=stats)
    # 6. Write the exp dir atomically and reload it through ESPnet.
    result.report["lowrank_config_file"] = config_path
    save_compressed(result, train_config, args.output_dir, source_config_file=args.asr_train_config,
                    source_files=sources, overwrite=args.overwrite)
    if work_dir:  # part statistics are large; the exp dir now holds the result
        remove_work_dir(work_dir, args.output_dir, keep=sources)
    print(compression_report_md(result.report).split("## Layers")[0])
    print(f"wrote {os.path.abspath(args.output_dir)}")


INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyMismatchError,
                OutputWriteError)


def cli(cmd: Optional[List[str]] = None) -> int:
    """``main``, with bad input and signals ending in one stderr line and a non-zero status
    (a traceback with ``--verbose``)."""
    verbose = "--verbose" in (sys.argv[1:] if cmd is None else cmd)
    try:
        with sigterm_as_interrupt():
            main(cmd)
    except INPUT_ERRORS as e:
        if verbose:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"espnet_lowrank.compress: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"espnet_lowrank.compress: interrupted ({e or 'SIGINT'}); nothing was written",
              file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
