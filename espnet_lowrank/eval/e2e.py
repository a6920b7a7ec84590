"""End-to-end transcription time of exp dirs against their dense model and
faster-whisper, on real speech: short utterances and 30 s long-form windows.

Every variant transcribes every item once per round, and the variants take
turns within each round (their order rotates), so that a machine that gets
busier or cooler halfway touches them all alike; the ratios to the dense row
are what a reader should take away, not the seconds.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from espnet_lowrank.batches import batch_windows, pack
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.decode import load_speech2text
from espnet_lowrank.eval.tables import sdi
from espnet_lowrank.quantize import quantize_linears_
from espnet_lowrank.scoring import ScoreRow, score_texts

SAMPLE_RATE = 16000
LONG_FORM_SECONDS = 30.0


@dataclass
class Item:
    """One thing to transcribe: an utterance, or consecutive ones in a window."""

    key: str
    set_name: str
    audio: np.ndarray
    text: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def items_from(data_dir: str, first: int = 0, last: Optional[int] = None, long_form: bool = False,
               name: Optional[str] = None) -> List[Item]:
    """Utterances ``first`` to ``last`` - 1 of a Kaldi dir (with ``text``, sorted
    by id), each one item, or (``long_form``) packed into windows of at most
    30 s, as long-form transcription cuts audio for Whisper; a window's
    reference is its utterances' transcripts in order."""
    utts = read_data_dir(data_dir, require_text=True)[first:last]
    set_name = (name or os.path.basename(os.path.normpath(data_dir))) + (" (30 s)" if long_form else "")
    windows = pack(utts, LONG_FORM_SECONDS) if long_form else [[u] for u in utts]
    # one window per batch: its row is the window's audio, gaps included, unpadded
    rows = (speech[0].numpy() for speech, _ in batch_windows(windows, 1))
    return [Item(window[0].utt_id, set_name, row, " ".join(u.text for u in window))
            for window, row in zip(windows, rows)]


class EncoderClock:
    """Seconds spent inside a module's forward (hooks before and after)."""

    def __init__(self, module: torch.nn.Module):
        self.seconds, self._start = 0.0, None
        module.register_forward_pre_hook(self._begin)
        module.register_forward_hook(self._end)

    def _begin(self, *_):
        self._start = time.perf_counter()

    def _end(self, *_):
        self.seconds += time.perf_counter() - self._start


@dataclass
class Variant:
    """A named transcriber: ``transcribe(audio) -> text``; ``clock`` times its
    encoder where it can be reached (not inside faster-whisper)."""

    name: str
    transcribe: Callable[[np.ndarray], str]
    clock: Optional[EncoderClock] = None
    engine: object = None  # what transcribes (a Speech2Text, a WhisperModel)
    seconds: float = 0.0
    hyps: Dict[str, str] = field(default_factory=dict)


def espnet_variant(name: str, exp_dir: str, int8: bool = False, beam_size: Optional[int] = None) -> Variant:
    """An exp dir as it is deployed: ``Speech2Text`` with its config.yaml and
    decode.yaml (``beam_size`` replacing its beam); ``int8`` adds what
    ``deployment.int8`` ships: dynamic int8 on the encoder's linears and, for
    Whisper, the decoder's."""
    s2t = load_speech2text(exp_dir, **({} if beam_size is None else {"beam_size": beam_size}))
    if int8:  # in place: the beam search holds this model's decoder
        quantize_linears_(s2t.asr_model.encoder)
        if hasattr(s2t.asr_model.decoder, "quantize_"):
            s2t.asr_model.decoder.quantize_()
    s2t.asr_model.eval()
    clock = EncoderClock(s2t.asr_model.encoder)

    @torch.no_grad()
    def transcribe(audio: np.ndarray) -> str:
        return s2t(audio)[0][0]

    return Variant(name, transcribe, clock, s2t)


def faster_whisper_variant(name: str, model_dir: str, compute_type: str, threads: int) -> Variant:
    """faster-whisper (CTranslate2) on the same weights, greedy, no timestamps,
    no VAD and no conditioning on earlier text: what our decode.yaml does."""
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)

    def transcribe(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, language="en", beam_size=1, temperature=0.0,
                                       without_timestamps=True, condition_on_previous_text=False,
                                       vad_filter=False)
        return "".join(s.text for s in segments).strip()

    return Variant(name, transcribe, engine=model)


def run_rounds(variants: Sequence[Variant], items: Sequence[Item], rounds: int = 1,
               progress: Callable = lambda x, **_: x) -> None:
    """Each round, every variant transcribes every item; the order of the
    variants rotates by one per round. Seconds add up over rounds; the
    hypotheses are the last round's (decoding is deterministic)."""
    for r in progress(range(rounds), desc="rounds", unit="round"):
        order = list(variants[r % len(variants):]) + list(variants[:r % len(variants)])
        for variant in order:
            for item in items:
                started = time.perf_counter()
                variant.hyps[item.key] = variant.transcribe(item.audio)
                variant.seconds += time.perf_counter() - started


@dataclass
class Row:
    name: str
    seconds: float
    rtf: float
    vs_dense: Optional[float]
    encoder_share: Optional[float]
    scores: Dict[str, ScoreRow]


def rows_of(variants: Sequence[Variant], items: Sequence[Item], rounds: int, dense: str = "dense") -> List[Row]:
    """Per variant: seconds per round, real-time factor, time over the dense
    row's, the encoder's share of the time, and WER with S/D/I per set."""
    audio_seconds = sum(i.seconds for i in items)
    base = next((v.seconds for v in variants if v.name == dense), None)
    rows = []
    for v in variants:
        scores = {}
        for set_name in dict.fromkeys(i.set_name for i in items):
            mine = [i for i in items if i.set_name == set_name]
            scores[set_name] = score_texts({i.key: i.text for i in mine}, {i.key: v.hyps[i.key] for i in mine},
                                           dataset=set_name, normalize="whisper")
        share = v.clock.seconds / v.seconds if v.clock is not None and v.seconds else None
        rows.append(Row(v.name, v.seconds / rounds, v.seconds / rounds / audio_seconds,
                        None if base is None else v.seconds / base, share, scores))
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """One line per variant; WER cells as ``err (S/D/I)`` per set."""
    sets = list(rows[0].scores)
    head = ["variant", "s / round", "RTF", "× dense time", "encoder share"] + [f"WER {s} (S/D/I)" for s in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, f"{r.seconds:.1f}", f"{r.rtf:.3f}",
                 "—" if r.vs_dense is None else f"{r.vs_dense:.2f}",
                 "—" if r.encoder_share is None else f"{100 * r.encoder_share:.0f}%"]
        cells += [sdi(s.err, s.sub, s.dele, s.ins, sep="/") for s in r.scores.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
