"""Export a local Whisper checkpoint as a dense ESPnet ASR exp dir: ``config.yaml`` (the plugin's
``whisper_local`` encoder/decoder, token list inlined), ``model.pth`` and ``decode.yaml`` (greedy decoding
for ``espnet2.bin.asr_inference --config``). CLI: ``python -m espnet_lowrank.bin.export_whisper``."""

import logging
import os
from typing import Any, Dict

import torch
import yaml

from espnet_lowrank.espnet.registry import register
from espnet_lowrank.utils import atomic_output_dir
from espnet_lowrank.whisper.checkpoints import load_whisper_checkpoint
from espnet_lowrank.whisper.loop_guard import LOOP_REPEATS, LOOP_TOKENS
from espnet_lowrank.whisper.tokenizer import (
    get_whisper_tokenizer,
    whisper_decoding_filters,
    whisper_token_list,
)

logger = logging.getLogger(__name__)


def build_config(dims, language: str = "en", task: str = "transcribe") -> Dict[str, Any]:
    """The ESPnet ASR train config (a dict) of a dense Whisper model."""
    token_type = "whisper_multilingual" if dims.n_vocab >= 51865 else "whisper_en"
    tokenizer = get_whisper_tokenizer(dims.n_vocab, language, task)
    token_list = whisper_token_list(tokenizer, dims.n_vocab)
    return {
        "token_type": token_type,
        "bpemodel": token_type,
        "non_linguistic_symbols": None, "cleaner": None, "g2p": None,
        "input_size": 1,  # raw audio; the encoder computes the log-mel itself
        "use_preprocessor": True,
        "preprocessor": "default",
        "preprocessor_conf": {"whisper_language": language, "whisper_task": task},
        "frontend": None, "frontend_conf": {},
        "specaug": None, "specaug_conf": {},
        "normalize": None, "normalize_conf": {},
        "model": "espnet",
        "model_conf": {
            "ctc_weight": 0.0,  # no CTC: ESPnetASRModel then keeps no ctc module
            "lsm_weight": 0.1,
            "length_normalized_loss": False,
            "sym_sos": "<|startoftranscript|>",
            "sym_eos": "<|endoftext|>",
        },
        "preencoder": None, "preencoder_conf": {},
        "encoder": "whisper_local",
        "encoder_conf": {
            "n_mels": dims.n_mels,
            "n_ctx": dims.n_audio_ctx,
            "n_state": dims.n_audio_state,
            "n_head": dims.n_audio_head,
            "n_layer": dims.n_audio_layer,
            "do_pad_trim": True,
        },
        "postencoder": None, "postencoder_conf": {},
        "decoder": "whisper_local",
        "decoder_conf": {
            "n_vocab": dims.n_vocab,
            "n_ctx": dims.n_text_ctx,
            "n_state": dims.n_text_state,
            "n_head": dims.n_text_head,
            "n_layer": dims.n_text_layer,
            **whisper_decoding_filters(tokenizer),
            # end a hypothesis that loops (LocalWhisperDecoder's loop guard; 0 turns it off)
            "loop_repeats": LOOP_REPEATS,
            "loop_tokens": LOOP_TOKENS,
        },
        "ctc_conf": {},
        "init": None,
        "token_list": token_list,
    }


def build_decode_config(dims) -> Dict[str, Any]:
    # whisper's greedy decoding samples at most n_text_ctx // 2 tokens (negative maxlenratio: a fixed maximum)
    return {"batch_size": 1, "beam_size": 1, "ctc_weight": 0.0, "lm_weight": 0.0, "penalty": 0.0, "nbest": 1,
            "minlenratio": 0.0, "maxlenratio": -float(dims.n_text_ctx // 2)}


def espnet_state_dict(whisper_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """openai-whisper state dict -> ESPnetASRModel state dict (``encoder.x`` -> ``encoder.encoders.x``)."""
    out = {}
    for k, v in whisper_sd.items():
        part, _, rest = k.partition(".")
        if part not in ("encoder", "decoder"):
            raise KeyError(k)
        out[f"{part}.{part}s.{rest}"] = v
    return out


def _dump_yaml(obj: Dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(obj, f, allow_unicode=True, sort_keys=False, width=1000)


def export_whisper(
    model: str,
    output_dir: str,
    language: str = "en",
    task: str = "transcribe",
    overwrite: bool = False,
    check: bool = True,
) -> str:
    """Write the dense ESPnet exp dir for Whisper ``model``; returns its path."""
    whisper_sd, dims = load_whisper_checkpoint(model)
    logger.info("loaded %s: %s", model, dims)
    config = build_config(dims, language, task)
    state = espnet_state_dict(whisper_sd)
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        _dump_yaml(config, os.path.join(tmp, "config.yaml"))
        _dump_yaml(build_decode_config(dims), os.path.join(tmp, "decode.yaml"))
        torch.save(state, os.path.join(tmp, "model.pth"))
        if check:
            check_exp_dir(tmp)
    logger.info("wrote %s", output_dir)
    return os.path.abspath(output_dir)


def check_exp_dir(exp_dir: str) -> None:
    """Build the ESPnet model from ``exp_dir`` and check that model.pth covers
    its state dict exactly (ESPnet itself loads with strict=False)."""
    register()
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(os.path.join(exp_dir, "config.yaml"), None, "cpu")
    state = torch.load(os.path.join(exp_dir, "model.pth"), map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"model.pth does not match config.yaml: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
