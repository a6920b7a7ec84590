"""Audio read as Whisper and ESPnet need it (mono float32 at 16 kHz, only the frames a model can
use), and calibration audio checked before the expensive work."""

import logging
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_lowrank.data import Utterance, file_kind, listed

logger = logging.getLogger(__name__)

# Sample rates outside this range are a broken header, not audio: a 1 Hz
# header would make a 32 KB file 256 M samples once resampled.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 192000


def _open_audio_info(path: str):
    """soundfile's info for a regular file (a FIFO is never opened) with a sane sample rate."""
    import soundfile as sf

    kind = file_kind(path)
    if kind is None:
        raise FileNotFoundError(f"audio file not found: {path}")
    if kind != "file":
        raise ValueError(f"audio path {path} is {kind}, not a regular file")
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise ValueError(f"cannot read audio file {path} (corrupt or unsupported format): {e}") from e
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise ValueError(f"audio file {path} has a sample rate of {info.samplerate} Hz in its header, "
                         f"outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: a broken header, refused")
    return info


def load_audio(path: str, sample_rate: int = 16000, max_seconds: Optional[float] = None) -> np.ndarray:
    """Float32 mono (channels averaged) at ``sample_rate``, only the first ``max_seconds`` read (what a
    fixed input window, e.g. Whisper's 30 s, can use). Raises FileNotFoundError, or ValueError for a
    non-regular file, a sample rate outside 4-192 kHz, or a corrupt, empty or non-finite file."""
    import soundfile as sf

    sr = _open_audio_info(path).samplerate
    frames = -1
    if max_seconds is not None:
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        # a little more than asked, so that resampling sees past the cut
        frames = int(math.ceil((max_seconds + (0.0 if sr == sample_rate else 0.05)) * sr))
    try:
        audio, sr = sf.read(path, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise ValueError(f"cannot read audio file {path} (corrupt or unsupported format): {e}") from e
    if audio.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty (zero samples)")
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"audio file {path} contains non-finite samples (NaN/Inf)")
    if sr != sample_rate:
        import torchaudio.functional as AF  # an install requirement, imported only to resample

        audio = AF.resample(torch.from_numpy(audio), sr, sample_rate).numpy()
        logger.debug("resampled %s from %d to %d Hz", path, sr, sample_rate)
    if max_seconds is not None:
        audio = audio[: int(round(max_seconds * sample_rate))]
    return np.ascontiguousarray(audio, dtype=np.float32)


# Below this much non-silent audio, the per-layer statistics (d x d moments)
# are estimated from too few frames to mean anything.
MIN_CALIBRATION_SPEECH_SECONDS = 1.0
SHORT_SECONDS = 0.1
SILENT_PEAK = 1e-4


def _scan_audio(path: str, max_seconds: Optional[float]) -> Tuple[float, float, float]:
    """(seconds read, seconds in the file, peak of the channel mean) of the first ``max_seconds``
    (None: all), read in blocks so memory does not grow with the file; raises as :func:`load_audio`."""
    import soundfile as sf

    info = _open_audio_info(path)
    sr = info.samplerate
    frames = -1 if max_seconds is None else int(math.ceil(max_seconds * sr))
    n, peak = 0, 0.0
    try:
        for block in sf.blocks(path, blocksize=1 << 16, frames=frames, dtype="float32", always_2d=True):
            mono = block.mean(axis=1)
            if not np.all(np.isfinite(mono)):
                raise ValueError(f"audio file {path} contains non-finite samples (NaN/Inf)")
            n += len(mono)
            if len(mono):
                peak = max(peak, float(np.abs(mono).max()))
    except ValueError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise ValueError(f"cannot read audio file {path} (corrupt or unsupported format): {e}") from e
    if n == 0:
        raise ValueError(f"audio file {path} is empty (zero samples)")
    return n / sr, info.frames / sr, peak


def check_calibration_audio(utts: Sequence[Utterance], max_seconds: Optional[float] = None) -> float:
    """Seconds of non-silent audio (within ``max_seconds``, a model's input window) in the set,
    read once in blocks: unreadable audio raises naming the file, short, silent or (one line)
    longer files are logged, and less than ``MIN_CALIBRATION_SPEECH_SECONDS`` is refused."""
    speech_seconds, longer = 0.0, []
    for u in utts:
        seconds, total, peak = _scan_audio(u.wav_path, max_seconds)
        if max_seconds is not None and total > max_seconds:
            longer.append(u.utt_id)
        if seconds < SHORT_SECONDS:
            logger.warning("calibration utterance %s is only %.1f ms long", u.utt_id, 1000 * seconds)
        if peak < SILENT_PEAK:
            logger.warning("calibration utterance %s is silent (peak < %g)", u.utt_id, SILENT_PEAK)
            continue
        speech_seconds += seconds
    if longer:
        logger.warning("%d of %d calibration utterances are longer than %g s; only their first %g s are "
                       "used (%s)", len(longer), len(utts), max_seconds, max_seconds, listed(longer))
    if speech_seconds < MIN_CALIBRATION_SPEECH_SECONDS:
        raise ValueError(f"the calibration set has only {speech_seconds:.3f} s of non-silent audio in "
                         f"{len(utts)} utterances; at least {MIN_CALIBRATION_SPEECH_SECONDS} s is needed "
                         "to estimate the statistics")
    return speech_seconds
