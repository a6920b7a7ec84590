"""Calibration batches: utterances packed into windows, windows into
zero-padded batches, and the checked calibration set."""

import logging
import math
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_lowrank.audio import check_calibration_audio, load_audio
from espnet_lowrank.data import Utterance, listed, read_data_dir, select

logger = logging.getLogger(__name__)

# Silence between the utterances of a packed window (``pack_seconds``).
PACK_GAP_SECONDS = 0.2


def pack(utts: Sequence[Utterance], pack_seconds: Optional[float]) -> List[List[Utterance]]:
    """Consecutive utterances grouped into windows of at most ``pack_seconds``
    (gaps included; a longer utterance is a window alone). None: one each."""
    if pack_seconds is None:
        return [[u] for u in utts]
    import soundfile as sf

    windows: List[List[Utterance]] = []
    filled = math.inf
    for u in utts:
        info = sf.info(u.wav_path)
        seconds = info.frames / info.samplerate
        if filled + PACK_GAP_SECONDS + seconds > pack_seconds:
            windows.append([u])
            filled = seconds
        else:
            windows[-1].append(u)
            filled += PACK_GAP_SECONDS + seconds
    return windows


def num_batches(n: int, batch_size: int) -> int:
    """Number of batches ``iter_batches`` yields for ``n`` windows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return math.ceil(n / batch_size)


def iter_batches(
    utts: Sequence[Utterance], batch_size: int, sample_rate: int = 16000,
    pack_seconds: Optional[float] = None, max_seconds: Optional[float] = None,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """``(speech (B, max_samples) float32 zero-padded, lengths (B,) int64)`` batches of at most
    ``batch_size`` rows in order, a row being one utterance or with ``pack_seconds`` a window."""
    return batch_windows(pack(utts, pack_seconds), batch_size, sample_rate, max_seconds)


# The utterances of the batch that batch_windows yielded last, and its shape:
# calibration names them when the encoder's activations are not finite.
_last_batch: Tuple[Tuple[int, ...], List[str]] = ((), [])


def describe_batch(speech: torch.Tensor) -> str:
    """``"utt_id (path), ..."`` of the batch :func:`batch_windows` yielded last, if ``speech`` has
    its shape (batches are consumed as they come); "" when unknown."""
    shape, names = _last_batch
    return listed(names) if names and tuple(speech.shape) == shape else ""


def batch_windows(
    windows: Sequence[List[Utterance]], batch_size: int, sample_rate: int = 16000,
    max_seconds: Optional[float] = None,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """:func:`iter_batches` on windows made by :func:`pack`, one row each (0.2 s of silence between
    utterances); with ``max_seconds`` a row is cut there, and only the audio it keeps is read."""
    global _last_batch
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gap = np.zeros(int(PACK_GAP_SECONDS * sample_rate), dtype=np.float32)
    limit = None if max_seconds is None else int(round(max_seconds * sample_rate))
    for start in range(0, len(windows), batch_size):
        chunk, names = [], []
        for window in windows[start: start + batch_size]:
            parts, filled = [], 0
            for u in window:
                if parts:
                    parts.append(gap)
                    filled += len(gap)
                left = None if limit is None else limit - filled
                if left is not None and left <= 0:
                    break
                seconds = None if left is None else left / sample_rate
                parts.append(load_audio(u.wav_path, sample_rate, seconds))
                filled += len(parts[-1])
                names.append(f"{u.utt_id} ({u.wav_path})")
            row = np.concatenate(parts)
            chunk.append(row if limit is None else row[:limit])
        lengths = torch.tensor([len(a) for a in chunk], dtype=torch.int64)
        speech = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(a) for a in chunk], batch_first=True)
        _last_batch = (tuple(speech.shape), names)
        yield speech, lengths


def calibration_utterances(calib_data: Union[str, Sequence[Utterance]], num_calib: Optional[int],
                           max_seconds: Optional[float] = None) -> List[Utterance]:
    """``num_calib`` utterances of a data dir or list, their audio checked (with ``max_seconds``,
    the model's input window, only that much of each file)."""
    utts = read_data_dir(calib_data) if isinstance(calib_data, str) else list(calib_data)
    utts = select(utts, num_calib)
    if not utts:
        raise ValueError("the calibration set is empty: no utterances to calibrate on")
    check_calibration_audio(utts, max_seconds=max_seconds)
    return utts
