"""Greedy decoding of utterance lists with an exp dir as it is deployed
(ESPnet's ``Speech2Text`` with its config.yaml and decode.yaml), WER with
Whisper's English normalizer, and the hypotheses kept per row and set."""

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
import yaml

from espnet_lowrank.audio import load_audio
from espnet_lowrank.quantize import quantize_linears_
from espnet_lowrank.scoring import ScoreRow, score_texts, utterance_errors


def load_speech2text(exp_dir, **overrides):
    """``Speech2Text`` on the CPU from an exp dir's config.yaml, model.pth and
    decode.yaml; ``overrides`` replace decode.yaml's settings."""
    from espnet2.bin.asr_inference import Speech2Text

    with open(os.path.join(exp_dir, "decode.yaml"), encoding="utf-8") as f:
        decode = yaml.safe_load(f) or {}
    decode.update(overrides)
    return Speech2Text(os.path.join(exp_dir, "config.yaml"), os.path.join(exp_dir, "model.pth"), device="cpu",
                       **decode)


def with_model(s2t, model):
    """A shallow copy of ``s2t`` (same tokenizer and beam search, so the same
    decoder) whose encoder pass runs ``model``."""
    out = copy.copy(s2t)
    out.asr_model = model
    return out


def int8_copy(model):
    """A copy of ``model`` with dynamic int8 on its encoder's linears."""
    q = copy.deepcopy(model)
    quantize_linears_(q.encoder)
    return q


def transcribe(s2t, utts) -> Dict[str, str]:
    """utt id -> the best hypothesis of each utterance, one at a time."""
    with torch.no_grad():
        return {u.utt_id: s2t(load_audio(u.wav_path))[0][0] for u in utts}


def write_hyps(hyp_dir, name: str, hyps: Dict[str, str]) -> None:
    """``hyp_dir/<name>.txt`` in Kaldi ``text`` format, sorted by id."""
    os.makedirs(hyp_dir, exist_ok=True)
    Path(hyp_dir, f"{name}.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(hyps.items())))


@dataclass
class Decoded:
    """One set decoded by one row."""

    score: ScoreRow  # corpus WER with S / D / I
    errors: Dict[str, tuple]  # utt id -> (word errors, reference words), for the paired bootstrap
    hyps: Dict[str, str]


def decode_sets(s2t, eval_sets, hyp_dir: Optional[str] = None) -> Dict[str, Decoded]:
    """Decode and score every set (name -> utterances with text); with
    ``hyp_dir``, each set's hypotheses are written there too."""
    out = {}
    for name, utts in eval_sets.items():
        refs = {u.utt_id: u.text for u in utts}
        hyps = transcribe(s2t, utts)
        if hyp_dir is not None:
            write_hyps(hyp_dir, name, hyps)
        out[name] = Decoded(score_texts(refs, hyps, dataset=name, normalize="whisper"),
                            utterance_errors(refs, hyps), hyps)
    return out


@contextlib.contextmanager
def loop_guard_off(s2t):
    """Whisper's decoder loop guard off (``loop_repeats = 0``) inside the block;
    a decoder without one ends the run."""
    guard = s2t.beam_search.full_scorers.get("decoder")  # the decoder module that beam search calls
    kept = getattr(guard, "loop_repeats", None)
    if kept is None:
        raise SystemExit(f"--no_loop_guard: {type(guard).__name__} has no loop guard (Whisper only)")
    guard.loop_repeats = 0
    try:
        yield
    finally:
        guard.loop_repeats = kept
