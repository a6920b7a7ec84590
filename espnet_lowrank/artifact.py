"""ESPnet exp dirs in and out: ``config.yaml`` + ``model.pth`` (+ ``decode.yaml``,
``report.json``/``report.md``), loaded with a strict key check because ESPnet
itself loads with ``strict=False`` and would silently drop renamed weights.
"""

import copy
import json
import logging
import os
import pickle
import shutil
from argparse import Namespace
from typing import Callable, Dict, Optional, Tuple

import torch
import yaml

from espnet_lowrank.espnet.registry import register
from espnet_lowrank.utils import atomic_output_dir, real_path

logger = logging.getLogger(__name__)

# encoder_conf.version of the config.yaml written here; exp dirs without it
# (written before versioning) read as version 1.
PLAN_VERSION = 1


class KeyMismatchError(RuntimeError):
    """A state dict does not fit the model that its config builds."""


def check_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    """Raise KeyMismatchError unless keys and shapes match exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        def head(items):
            return f"{len(items)} {items[:5]}{' ...' if len(items) > 5 else ''}"
        raise KeyMismatchError(f"{what}: the config does not match the checkpoint — missing "
                               f"{head(missing)}, unexpected {head(unexpected)}, "
                               f"shape mismatches {head(shapes)}")


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a YAML mapping, got {type(values).__name__}")
    return values


def build_asr_model(config: dict):
    """Build an ESPnetASRModel from a train config dict (plugin registered)."""
    from espnet2.tasks.asr import ASRTask

    register()
    model = ASRTask.build_model(Namespace(**config))
    # Whisper's decoder primes with the exp's language and task (recovery's teacher transcripts)
    if hasattr(model.decoder, "prompt"):
        prep = config.get("preprocessor_conf") or {}
        model.decoder.language = prep.get("whisper_language") or "en"
        model.decoder.task = prep.get("whisper_task") or "transcribe"
    return model


def read_state_dict(model_file: str) -> Dict[str, torch.Tensor]:
    """A ``model.pth`` as a plain state dict. ``weights_only=True``: a pickle
    that would run code, or a file that is not a state dict, is refused."""
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"model file not found: {model_file}")
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError):
            raise ValueError(f"{model_file} is not a plain state dict (refused by the weights-only "
                             f"loader, nothing was executed): {first}") from None
        raise ValueError(f"cannot read {model_file} (truncated or not a PyTorch file): {first}") from None
    if isinstance(state, dict) and "module" in state and not isinstance(state["module"], torch.Tensor):
        state = state["module"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{model_file} does not hold a state dict (name -> tensor)")
    return state


def load_asr_model(config_file: str, model_file: str, device: str = "cpu") -> Tuple[torch.nn.Module, dict]:
    """The model of ``config_file`` with ``model_file`` loaded, failing on any key mismatch."""
    config = read_yaml(config_file)
    model = build_asr_model(config)
    state = read_state_dict(model_file)
    check_state_dict(model, state, f"{config_file} + {model_file}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def lowrank_train_config(train_config: dict, step_conf: Dict[str, object]) -> dict:
    """The train config with ``encoder: lowrank`` wrapping the dense encoder,
    and what the compression steps wrote (``CompressionResult.encoder_conf``)."""
    if str(train_config.get("encoder", "")).lower() == "lowrank":
        raise ValueError("the source model is already low-rank; compress its dense original")
    config = copy.deepcopy(train_config)
    config["encoder_conf"] = {
        "base": train_config["encoder"],
        "base_conf": copy.deepcopy(train_config.get("encoder_conf") or {}),
        **copy.deepcopy(step_conf),
        "version": PLAN_VERSION,
    }
    if step_conf.get("int8") and config.get("decoder") == "whisper_local":  # its linears and vocabulary too
        config["decoder_conf"] = {**(config.get("decoder_conf") or {}), "int8": True}
    config["encoder"] = "lowrank"
    return config


def _localize_files(config: dict, output_dir: str, final_dir: str) -> dict:
    """Copy files the config points at (normalization stats, BPE model, token list) into the
    exp dir, so it keeps working wherever it is decoded from."""
    config = copy.deepcopy(config)
    for section, key in [("normalize_conf", "stats_file"), (None, "bpemodel"), (None, "token_list")]:
        holder = config.get(section) if section else config
        src = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(src, str) or not os.path.isfile(src):
            continue
        name = os.path.basename(src)
        shutil.copyfile(src, os.path.join(output_dir, name))
        holder[key] = os.path.join(final_dir, name)
    return config


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_exp_dir(output_dir: str, model: torch.nn.Module, train_config: dict, decode_config: dict,
                 report: dict, report_md: str, source_files: Tuple[str, ...] = (), overwrite: bool = False,
                 figures: Optional[Dict[str, Callable[[str], None]]] = None) -> None:
    """Write config.yaml, model.pth, decode.yaml, the reports and ``figures`` (file name ->
    writer) atomically, then reload them through ESPnet with the strict key check."""
    final_dir = real_path(output_dir)
    with atomic_output_dir(final_dir, overwrite=overwrite, source_files=source_files) as tmp:
        config = _localize_files(train_config, tmp, final_dir)
        _write_text(os.path.join(tmp, "config.yaml"),
                    yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        torch.save(model.state_dict(), os.path.join(tmp, "model.pth"))
        _write_text(os.path.join(tmp, "decode.yaml"), yaml.safe_dump(decode_config, sort_keys=False))
        _write_text(os.path.join(tmp, "report.json"), json.dumps(report, indent=2))
        _write_text(os.path.join(tmp, "report.md"), report_md)
        for name, write_figure in (figures or {}).items():
            write_figure(os.path.join(tmp, name))
        # Reload exactly what ESPnet will read; a mismatch aborts the write. config.yaml points
        # at final_dir, which does not exist yet: reload a copy whose localized files are in tmp.
        reload_config = os.path.join(tmp, ".reload_config.yaml")
        _write_text(reload_config, yaml.safe_dump(_localize_files(train_config, tmp, tmp), sort_keys=False,
                                                  allow_unicode=True))
        reloaded, _ = load_asr_model(reload_config, os.path.join(tmp, "model.pth"))
        os.remove(reload_config)
        check_forward(reloaded)
        logger.info("reloaded %s: all %d keys match, a forward pass runs", final_dir,
                    len(reloaded.state_dict()))


@torch.no_grad()
def check_forward(model: torch.nn.Module) -> None:
    """One forward pass of the encoder on a second of noise, so that a model that only fails when
    it runs (e.g. int8 applied at load) fails before the exp dir is renamed into place."""
    speech = 0.01 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    encoded, _ = model.encode(speech, torch.tensor([16000]))
    if not torch.isfinite(encoded).all():
        raise RuntimeError("the reloaded model's encoder gives non-finite outputs on a test input")


def default_decode_config(source_config_file: Optional[str], model) -> dict:
    """The source exp dir's decode.yaml when it has one, else a standard attention/CTC beam search."""
    if source_config_file:
        candidate = os.path.join(os.path.dirname(os.path.abspath(source_config_file)), "decode.yaml")
        if os.path.isfile(candidate):
            return read_yaml(candidate)
    has_ctc = getattr(model, "ctc", None) is not None and getattr(model, "ctc_weight", 0) > 0
    return {"beam_size": 10, "ctc_weight": 0.3 if has_ctc else 0.0, "lm_weight": 0.0, "penalty": 0.0,
            "maxlenratio": 0.0, "minlenratio": 0.0}
