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
_HF_TOP_INV = {v: k for k, v in _HF_TOP.items()}


def openai_key_to_hf(key: str) -> str:
    if key in _HF_TOP:
        return _HF_TOP[key]
    m = re.match(r"(encoder|decoder)\.blocks\.(\d+)(\..*)$", key)
    if m:
        rest = m.group(3)
        for a, b in _HF_BLOCK_RULES:
            if rest.startswith(a):
                rest = b + rest[len(a) :]
                break
        else:
            raise KeyError(key)
        return f"model.{m.group(1)}.layers.{m.group(2)}{rest}"
    if re.match(r"encoder\.conv[12]\.(weight|bias)$", key):
        return "model." + key
    raise KeyError(key)


def hf_key_to_openai(key: str) -> str:
    if key in _HF_TOP_INV:
        return _HF_TOP_INV[key]
    m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)(\..*)$", key)
    if m:
        rest = m.group(3)
        for a, b in _HF_BLOCK_RULES:
            if rest.startswith(b):
                rest = a + rest[len(b) :]
                break
        else:
            raise KeyError(key)
        return f"{m.group(1)}.blocks.{m.group(2)}{rest}"
    if re.match(r"model\.encoder\.conv[12]\.(weight|bias)$", key):
        return key[len("model.") :]
    raise KeyError(key)


def openai_to_hf_state_dict(sd: StateDict) -> StateDict:
    """openai-whisper state dict -> ``WhisperForConditionalGeneration`` names."""
    out = {openai_key_to_hf(k): v for k, v in sd.items()}
    out["proj_out.weight"] = sd["decoder.token_embedding.weight"]
    return out


def hf_to_openai_state_dict(sd: StateDict) -> StateDict:
    """``WhisperForConditionalGeneration`` state dict -> openai-whisper names."""
    out = {}
    for k, v in sd.items():
        if k == "proj_out.weight":
            continue  # tied to the token embedding
        try:
            out[hf_key_to_openai(k)] = v
        except KeyError:
            raise CheckpointError(f"unexpected Hugging Face Whisper tensor {k}") from None
    return out


def hf_config_to_dims(config: Dict):
    return dims_from_dict(
        dict(
            n_mels=config["num_mel_bins"],
            n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"],
            n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"],
            n_text_layer=config["decoder_layers"],
        )
    )


def load_hf_dir(path: str):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"{path} is a Hugging Face Whisper directory (model.safetensors); "
            "reading it needs the 'safetensors' package: pip install safetensors"
        ) from None
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    sd = hf_to_openai_state_dict(load_file(os.path.join(path, "model.safetensors")))
    return sd, hf_config_to_dims(config)

