"""Hugging Face ``WhisperForConditionalGeneration`` layout: key mapping both
ways, and loading a directory (``model.safetensors`` + ``config.json``)."""

import json
import os
import re
from typing import Dict

from espnet_lowrank.whisper.common import CheckpointError, StateDict, dims_from_dict

# (openai-whisper fragment, Hugging Face fragment), applied in order
_HF_BLOCK_RULES = [
    (".cross_attn_ln.", ".encoder_attn_layer_norm."),
    (".cross_attn.query.", ".encoder_attn.q_proj."),
    (".cross_attn.key.", ".encoder_attn.k_proj."),
    (".cross_attn.value.", ".encoder_attn.v_proj."),
    (".cross_attn.out.", ".encoder_attn.out_proj."),
    (".attn_ln.", ".self_attn_layer_norm."),
    (".attn.query.", ".self_attn.q_proj."),
    (".attn.key.", ".self_attn.k_proj."),
    (".attn.value.", ".self_attn.v_proj."),
    (".attn.out.", ".self_attn.out_proj."),
    (".mlp_ln.", ".final_layer_norm."),
    (".mlp.0.", ".fc1."),
    (".mlp.2.", ".fc2."),
]
_HF_TOP = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
    "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
    "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
    "decoder.ln.weight": "model.decoder.layer_norm.weight",
    "decoder.ln.bias": "model.decoder.layer_norm.bias",
}
_HF_TOP.update({f"encoder.{c}.{p}": f"model.encoder.{c}.{p}" for c in ("conv1", "conv2")
                for p in ("weight", "bias")})
_HF_TOP_INV = {v: k for k, v in _HF_TOP.items()}
_OPENAI_BLOCK = r"(encoder|decoder)\.blocks\.(\d+)(\..*)$"
_HF_BLOCK = r"model\.(encoder|decoder)\.layers\.(\d+)(\..*)$"


def _map_key(key: str, to_hf: bool) -> str:
    """One tensor name from openai-whisper to Hugging Face (``to_hf``) or back."""
    top = _HF_TOP if to_hf else _HF_TOP_INV
    if key in top:
        return top[key]
    m = re.match(_OPENAI_BLOCK if to_hf else _HF_BLOCK, key)
    if m:
        part, index, rest = m.groups()
        block = f"model.{part}.layers.{index}" if to_hf else f"{part}.blocks.{index}"
        for a, b in _HF_BLOCK_RULES:
            a, b = (a, b) if to_hf else (b, a)
            if rest.startswith(a):
                return block + b + rest[len(a):]
    raise KeyError(key)


def openai_to_hf_state_dict(sd: StateDict) -> StateDict:
    """openai-whisper state dict -> ``WhisperForConditionalGeneration`` names."""
    out = {_map_key(k, to_hf=True): v for k, v in sd.items()}
    out["proj_out.weight"] = sd["decoder.token_embedding.weight"]
    return out


def hf_to_openai_state_dict(sd: StateDict) -> StateDict:
    """``WhisperForConditionalGeneration`` state dict -> openai-whisper names."""
    out = {}
    for k, v in sd.items():
        if k == "proj_out.weight":
            continue  # tied to the token embedding
        try:
            out[_map_key(k, to_hf=False)] = v
        except KeyError:
            raise CheckpointError(f"unexpected Hugging Face Whisper tensor {k}") from None
    return out


def hf_config_to_dims(config: Dict):
    return dims_from_dict(dict(
        n_mels=config["num_mel_bins"], n_audio_ctx=config["max_source_positions"],
        n_audio_state=config["d_model"], n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"], n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"], n_text_state=config["d_model"],
        n_text_head=config["decoder_attention_heads"], n_text_layer=config["decoder_layers"],
    ))


def load_hf_dir(path: str):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a Hugging Face Whisper directory (model.safetensors); "
                              "reading it needs the 'safetensors' package: pip install safetensors") from None
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    sd = hf_to_openai_state_dict(load_file(os.path.join(path, "model.safetensors")))
    return sd, hf_config_to_dims(config)
