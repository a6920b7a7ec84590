#!/usr/bin/env python3
"""Make a trained exp dir (ASR or LM) self-contained and small enough to commit.

    python local/ship_exp.py exp/asr_train_asr_conformer --model valid.cer_ctc.ave.pth
    python local/ship_exp.py exp/lm_train_lm_sd_ft --model valid.loss.best.pth

- model.pth becomes a real copy of the chosen checkpoint (not a symlink);
- the BPE model and the feature-normalization stats (ASR only) are copied into
  the exp dir, and config.yaml points at them by paths relative to the recipe dir
  (ESPnet's convention: run from recipes/conformer/asr1);
- written atomically (``espnet_lowrank.utils.atomic_write``); the source files are only read.
"""

import argparse
import os
import shutil
import sys

import yaml

from espnet_lowrank.utils import atomic_write, atomic_write_text


def _copy(src: str, dst: str) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def ship(exp: str, model: str) -> None:
    config_path = os.path.join(exp, "config.yaml")
    with open(config_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    bpemodel = config.get("bpemodel")
    stats = (config.get("normalize_conf") or {}).get("stats_file")
    chosen = os.path.realpath(os.path.join(exp, model))
    is_asr = "normalize_conf" in config  # an LM config has no feature normalization
    needed = [("checkpoint", chosen), ("bpemodel", bpemodel)] + ([("stats_file", stats)] if is_asr else [])
    for what, path in needed:
        if not path or not os.path.isfile(path):
            sys.exit(f"ship_exp: {what} not found: {path}")
    rel = os.path.relpath(exp)  # relative to the recipe dir (cwd)
    bpe_target = os.path.join(rel, "bpe.model")
    if os.path.realpath(bpemodel) != os.path.realpath(bpe_target):
        _copy(bpemodel, bpe_target)
    config["bpemodel"] = bpe_target
    if is_asr:
        stats_target = os.path.join(rel, "feats_stats.npz")
        if os.path.realpath(stats) != os.path.realpath(stats_target):
            _copy(stats, stats_target)
        config["normalize_conf"]["stats_file"] = stats_target
    model_path = os.path.join(exp, "model.pth")
    _copy(chosen, model_path)  # the rename replaces a model.pth symlink, never its target
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    copied = "bpe.model, feats_stats.npz" if is_asr else "bpe.model"
    print(f"{exp}: model.pth ({os.path.getsize(model_path) / 1e6:.1f} MB, from {model}), "
          f"{copied}, config.yaml with paths relative to {os.getcwd()}", file=sys.stderr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exp")
    p.add_argument("--model", required=True, help="checkpoint file name inside exp, e.g. valid.cer_ctc.ave.pth")
    args = p.parse_args(argv)
    ship(args.exp, args.model)


if __name__ == "__main__":
    main()
