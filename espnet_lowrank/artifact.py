"""ESPnet exp dirs in and out: ``config.yaml`` + ``model.pth`` (+ ``decode.yaml``,
``report.json``/``report.md``), loaded with a strict key check because ESPnet
itself loads with ``strict=False`` and would silently drop renamed weights.
"""

import copy
import json
import logging
import os
import shutil
from argparse import Namespace
from typing import Callable, Dict, Optional, Tuple

import torch
import yaml

from espnet_lowrank.utils import atomic_output_dir

logger = logging.getLogger(__name__)


class KeyMismatchError(RuntimeError):
    """A state dict does not fit the model that its config builds."""


def check_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    """Raise KeyMismatchError unless keys and shapes match exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        def head(items):
            return f"{len(items)} {items[:5]}{' ...' if len(items) > 5 else ''}"

        raise KeyMismatchError(
            f"{what}: the config does not match the checkpoint — missing {head(missing)}, "
            f"unexpected {head(unexpected)}, shape mismatches {head(shapes)}"
        )


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config not found: {path}")
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a YAML mapping")
    return values


def build_asr_model(config: dict):
    """Build an ESPnetASRModel from a train config dict (plugin registered)."""
    from espnet2.tasks.asr import ASRTask

    from espnet_lowrank.espnet.registry import register

    register()
    return ASRTask.build_model(Namespace(**config))


def load_asr_model(config_file: str, model_file: str, device: str = "cpu") -> Tuple[torch.nn.Module, dict]:
    """Build the model of ``config_file`` and load ``model_file`` into it,
    failing loudly on any missing, unexpected or misshapen key."""
    config = read_yaml(config_file)
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"model file not found: {model_file}")
    model = build_asr_model(config)
    state = torch.load(model_file, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "module" in state and not isinstance(state["module"], torch.Tensor):
        state = state["module"]
    check_state_dict(model, state, f"{config_file} + {model_file}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def lowrank_train_config(
    train_config: dict, ranks: Dict[str, int], attention: str,
    int8: bool = False, elastic: bool = False,
) -> dict:
    """The train config with ``encoder: lowrank`` wrapping the dense encoder."""
    if str(train_config.get("encoder", "")).lower() == "lowrank":
        raise ValueError("the source model is already low-rank; compress its dense original")
    config = copy.deepcopy(train_config)
    config["encoder_conf"] = {
        "base": train_config["encoder"],
        "base_conf": copy.deepcopy(train_config.get("encoder_conf") or {}),
        "plan": {name: int(rank) for name, rank in ranks.items()},
        "attention": attention,
    }
    # Written only when on, so existing exp dirs keep their exact config.
    if int8:
        config["encoder_conf"]["int8"] = True
    if elastic:
        config["encoder_conf"]["elastic"] = True
    config["encoder"] = "lowrank"
    return config


def _localize_files(config: dict, output_dir: str, final_dir: str) -> dict:
    """Copy files the config points at (normalization stats, BPE model, token
    list) into the exp dir, so it keeps working wherever it is decoded from."""
    config = copy.deepcopy(config)
    slots = [("normalize_conf", "stats_file"), (None, "bpemodel"), (None, "token_list")]
    for section, key in slots:
        holder = config.get(section) if section else config
        if not isinstance(holder, dict) or not isinstance(holder.get(key), str):
            continue
        src = holder[key]
        if not os.path.isfile(src):
            continue
        name = os.path.basename(src)
        shutil.copyfile(src, os.path.join(output_dir, name))
        holder[key] = os.path.join(final_dir, name)
    return config


def save_exp_dir(
    output_dir: str,
    model: torch.nn.Module,
    train_config: dict,
    decode_config: dict,
    report: dict,
    report_md: str,
    source_files: Tuple[str, ...] = (),
    overwrite: bool = False,
    figures: Optional[Dict[str, Callable[[str], None]]] = None,
) -> None:
    """Write config.yaml, model.pth, decode.yaml, the reports and ``figures``
    (file name -> writer) atomically, then reload them through ESPnet with
    the strict key check."""
    final_dir = os.path.abspath(output_dir)
    for src in source_files:
        if os.path.abspath(src).startswith(final_dir + os.sep):
            raise ValueError(f"output dir {final_dir} holds the source file {src}; choose another")
    with atomic_output_dir(final_dir, overwrite=overwrite) as tmp:
        config = _localize_files(train_config, tmp, final_dir)
        with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
        torch.save(model.state_dict(), os.path.join(tmp, "model.pth"))
        with open(os.path.join(tmp, "decode.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(decode_config, f, sort_keys=False)
        with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(report_md)
        for name, write_figure in (figures or {}).items():
            write_figure(os.path.join(tmp, name))
        # Reload exactly what ESPnet will read; a mismatch aborts the write.
        # (config.yaml points at final_dir, which does not exist yet: reload
        # through a copy whose localized files point into tmp.)
        reload_config = os.path.join(tmp, ".reload_config.yaml")
        with open(reload_config, "w", encoding="utf-8") as f:
            yaml.safe_dump(_localize_files(train_config, tmp, tmp), f, sort_keys=False, allow_unicode=True)
        reloaded, _ = load_asr_model(reload_config, os.path.join(tmp, "model.pth"))
        os.remove(reload_config)
        logger.info("reloaded %s: all %d keys match", final_dir, len(reloaded.state_dict()))


def default_decode_config(source_config_file: Optional[str], model) -> dict:
    """The source exp dir's decode.yaml when it has one, else a standard
    attention/CTC beam search."""
    if source_config_file:
        candidate = os.path.join(os.path.dirname(os.path.abspath(source_config_file)), "decode.yaml")
        if os.path.isfile(candidate):
            return read_yaml(candidate)
    ctc_weight = 0.3 if getattr(model, "ctc", None) is not None and getattr(model, "ctc_weight", 0) > 0 else 0.0
    return {"beam_size": 10, "ctc_weight": ctc_weight, "lm_weight": 0.0, "penalty": 0.0,
            "maxlenratio": 0.0, "minlenratio": 0.0}
