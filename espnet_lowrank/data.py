"""Kaldi-style data directories and audio loading.

A data directory holds ``wav.scp`` (``<utt_id> <path>``), optionally ``text``
(``<utt_id> <transcript>``), ``utt2spk`` and ``spk2utt``. Relative paths in
``wav.scp`` resolve against the data directory. ESPnet-style piped commands
(``... |``) are not supported: convert the audio to files first.
"""

import io
import logging
import math
import os
import stat
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_lowrank.utils import atomic_write_text

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


@dataclass
class Utterance:
    """One utterance: id (no whitespace), absolute audio path, transcript
    (None without ``text``), speaker (None: the utt_id, when written)."""

    utt_id: str
    wav_path: str
    text: Optional[str] = None
    speaker: Optional[str] = None


def read_kv_file(path: str, allow_empty_value: bool) -> Dict[str, str]:
    """Read a Kaldi ``<key> <value>`` file (UTF-8), rejecting duplicates, bad
    lines and bytes that are not UTF-8 (naming the line and byte offset)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte offset "
                         f"{e.start}); write the file in UTF-8") from None
    out: Dict[str, str] = {}
    for lineno, raw in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) == 1 and not allow_empty_value:
            raise ValueError(
                f"{path}:{lineno}: malformed line (expected '<utt_id> <value>'): {raw.rstrip()!r}"
            )
        key = parts[0]
        value = parts[1].strip() if len(parts) == 2 else ""
        if key in out:
            raise ValueError(f"{path}:{lineno}: duplicate utterance id {key!r}")
        out[key] = value
    return out


def read_data_dir(path: str, require_text: bool = False) -> List[Utterance]:
    """Utterances of a Kaldi-style data dir, sorted by id, with absolute paths.

    Raises FileNotFoundError for a missing dir, ``wav.scp``, audio file or
    (with ``require_text``) ``text``; ValueError for an empty, malformed or
    non-UTF-8 file, duplicate ids, piped commands, audio paths that are not
    regular files (FIFOs, directories, devices: never opened), or ``text``
    ids not in ``wav.scp``.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data directory not found: {path}")
    scp = os.path.join(path, "wav.scp")
    if not os.path.isfile(scp):
        raise FileNotFoundError(f"no wav.scp in data directory {path}")
    wavs = read_kv_file(scp, allow_empty_value=False)
    if not wavs:
        raise ValueError(f"{scp} is empty: the data directory {path} has no utterances")
    for utt_id, wav in wavs.items():
        if wav.endswith("|"):
            raise ValueError(f"{scp}: utterance {utt_id!r} uses a piped command ({wav!r}); only plain "
                             "audio file paths are supported, convert the audio to files first")
    resolved = {u: w if os.path.isabs(w) else os.path.normpath(os.path.join(path, w))
                for u, w in wavs.items()}
    kinds = {u: _file_kind(w) for u, w in resolved.items()}
    missing = [f"{u} -> {w}" for u, w in resolved.items() if kinds[u] is None]
    if missing:
        raise FileNotFoundError(f"{scp}: {len(missing)} of {len(resolved)} audio files are missing: "
                                f"{_listed(missing, '; ')}")
    irregular = [f"{u} -> {w} ({kinds[u]}, not a regular file)" for u, w in resolved.items() if kinds[u] != "file"]
    if irregular:
        raise ValueError(f"{scp}: {len(irregular)} of {len(resolved)} audio paths are not audio files: "
                         f"{_listed(irregular, '; ')}")

    texts: Optional[Dict[str, str]] = None
    text_path = os.path.join(path, "text")
    if os.path.isfile(text_path):
        texts = read_kv_file(text_path, allow_empty_value=True)
        extra = sorted(set(texts) - set(resolved))
        if extra:
            raise ValueError(f"{text_path}: ids not in wav.scp: {_listed(extra)}")
    elif require_text:
        raise FileNotFoundError(f"no text file in data directory {path} (transcripts are required)")
    if require_text and texts is not None:
        lacking = sorted(set(resolved) - set(texts))
        if lacking:
            raise ValueError(f"{text_path}: no transcript for {len(lacking)} utterances: "
                             + ", ".join(lacking[:_MAX_LISTED]))

    speakers: Dict[str, str] = {}
    u2s = os.path.join(path, "utt2spk")
    if os.path.isfile(u2s):
        speakers = read_kv_file(u2s, allow_empty_value=False)

    return [Utterance(u, resolved[u], None if texts is None else texts.get(u), speakers.get(u))
            for u in sorted(resolved)]


def _file_kind(path: str) -> Optional[str]:
    """"file" for a regular file (or a link to one), None if nothing is
    there, else what it is ("a FIFO", "a directory", ...). Never opens it:
    opening a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:  # e.g. a dangling link loop, no permission on a parent
        return f"cannot stat: {e.strerror}"
    if stat.S_ISREG(mode):
        return "file"
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _listed(items: List[str], sep: str = ", ") -> str:
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return sep.join(items[:_MAX_LISTED]) + more


def write_data_dir(path: str, utts: Sequence[Utterance]) -> None:
    """Write ``wav.scp`` (absolute paths), ``utt2spk``, ``spk2utt`` and, when
    every utterance has a transcript, ``text``: sorted by id, atomically.
    Refuses empty, duplicate or whitespace ids and a mix of with/without text.
    """
    seen = set()
    for u in utts:
        if not u.utt_id or any(c.isspace() for c in u.utt_id):
            raise ValueError(f"invalid utterance id {u.utt_id!r} (empty or contains whitespace)")
        if u.utt_id in seen:
            raise ValueError(f"duplicate utterance id {u.utt_id!r}")
        seen.add(u.utt_id)
    if not utts:
        raise ValueError(f"no utterances to write to {path}")
    with_text = [u.text is not None for u in utts]
    if any(with_text) and not all(with_text):
        raise ValueError(f"some utterances have no transcript; cannot write {path}/text")
    ordered = sorted(utts, key=lambda u: u.utt_id)
    os.makedirs(path, exist_ok=True)
    atomic_write_text(
        os.path.join(path, "wav.scp"),
        "".join(f"{u.utt_id} {os.path.abspath(u.wav_path)}\n" for u in ordered),
    )
    if all(with_text):
        atomic_write_text(
            os.path.join(path, "text"),
            "".join(" ".join([u.utt_id] + u.text.split()) + "\n" for u in ordered),
        )
    spk_of = {u.utt_id: (u.speaker or u.utt_id) for u in ordered}
    atomic_write_text(
        os.path.join(path, "utt2spk"), "".join(f"{u} {s}\n" for u, s in spk_of.items())
    )
    spk2utt: Dict[str, List[str]] = {}
    for u, s in spk_of.items():
        spk2utt.setdefault(s, []).append(u)
    atomic_write_text(
        os.path.join(path, "spk2utt"),
        "".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())),
    )


def import_librispeech(root: str) -> List[Utterance]:
    """Utterances of a LibriSpeech tree (``root`` e.g. ``LibriSpeech/dev-clean``:
    ``*.trans.txt`` beside ``<utt_id>.flac``), sorted by id, with speakers."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"LibriSpeech root not found: {root}")
    utts: Dict[str, Utterance] = {}
    n_trans = 0
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".trans.txt"):
                continue
            n_trans += 1
            trans = os.path.join(dirpath, name)
            for utt_id, text in read_kv_file(trans, allow_empty_value=True).items():
                flac = os.path.join(dirpath, utt_id + ".flac")
                if not os.path.isfile(flac):
                    raise FileNotFoundError(f"{trans}: audio for {utt_id!r} not found: {flac}")
                if utt_id in utts:
                    raise ValueError(f"{trans}: duplicate utterance id {utt_id!r}")
                utts[utt_id] = Utterance(utt_id, flac, text, speaker=utt_id.split("-")[0])
    if n_trans == 0:
        raise FileNotFoundError(f"no *.trans.txt files under {root}: not a LibriSpeech tree")
    return [utts[k] for k in sorted(utts)]


def prepare_data_dir(src: str, dst: str) -> List[Utterance]:
    """Write ``dst`` (absolute paths) from a Kaldi data dir or a LibriSpeech
    tree ``src``; returns the utterances written."""
    if os.path.isfile(os.path.join(src, "wav.scp")):
        utts = read_data_dir(src)
    else:
        utts = import_librispeech(src)
    write_data_dir(dst, utts)
    logger.info("prepared %d utterances from %s in %s", len(utts), src, dst)
    return utts


# Sample rates outside this range are a broken header, not audio: a 1 Hz
# header would make a 32 KB file 256 M samples once resampled.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 192000


def _open_audio_info(path: str):
    """soundfile's info for ``path``, after checking it is a regular file (a
    FIFO is never opened) with a sane sample rate."""
    import soundfile as sf

    kind = _file_kind(path)
    if kind is None:
        raise FileNotFoundError(f"audio file not found: {path}")
    if kind != "file":
        raise ValueError(f"audio path {path} is {kind}, not a regular file")
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise ValueError(f"cannot read audio file {path} (corrupt or unsupported format): {e}") from e
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise ValueError(f"audio file {path} has a sample rate of {info.samplerate} Hz in its header, outside "
                         f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: a broken header, refused")
    return info


def load_audio(path: str, sample_rate: int = 16000, max_seconds: Optional[float] = None) -> np.ndarray:
    """A soundfile-readable file as float32 mono (channels averaged) at
    ``sample_rate`` (resampled by torchaudio). With ``max_seconds``, only its
    first ``max_seconds`` are read and returned (what a model with a fixed
    input window, e.g. Whisper's 30 s, can use). Raises FileNotFoundError,
    or ValueError for a path that is not a regular file, a sample rate
    outside 4-192 kHz, or a corrupt, empty or non-finite file."""
    import soundfile as sf

    info = _open_audio_info(path)
    sr = info.samplerate
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
        try:
            import torchaudio.functional as AF

            audio = AF.resample(torch.from_numpy(audio), sr, sample_rate).numpy()
        except ImportError as e:  # pragma: no cover - torchaudio ships with espnet
            raise ValueError(f"{path} has sample rate {sr} Hz, expected {sample_rate} Hz, "
                             "and torchaudio is not available to resample") from e
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
    """(seconds read, seconds in the file, peak of the channel mean) of
    ``path``'s first ``max_seconds`` (all of it: None), read in blocks so that
    memory does not grow with the file; raises as :func:`load_audio` does."""
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


def check_calibration_audio(utts: Sequence[Utterance], sample_rate: int = 16000,
                            max_seconds: Optional[float] = None) -> float:
    """Read every calibration file once, before the expensive work, in blocks
    (memory does not grow with a file's length): unreadable audio raises
    (naming the file), very short or silent files are logged, and a set with
    less than ``MIN_CALIBRATION_SPEECH_SECONDS`` of non-silent audio is
    refused. With ``max_seconds`` (a model's fixed input window), only that
    much of each file is read, and one line says how many files are longer.
    Returns the seconds of non-silent audio (within ``max_seconds``)."""
    speech_seconds = 0.0
    longer = []
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
                       "used (%s)", len(longer), len(utts), max_seconds, max_seconds, _listed(longer))
    if speech_seconds < MIN_CALIBRATION_SPEECH_SECONDS:
        raise ValueError(
            f"the calibration set has only {speech_seconds:.3f} s of non-silent audio in {len(utts)} "
            f"utterances; at least {MIN_CALIBRATION_SPEECH_SECONDS} s is needed to estimate the statistics"
        )
    return speech_seconds


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
    """``(speech (B, max_samples) float32 zero-padded, lengths (B,) int64)``
    batches of at most ``batch_size`` rows, in the given order. A row is one
    utterance, or with ``pack_seconds`` a window of consecutive ones (:func:`pack`),
    cut to ``max_seconds`` (only that much audio is read)."""
    return batch_windows(pack(utts, pack_seconds), batch_size, sample_rate, max_seconds)


# The utterances of the batch that batch_windows yielded last, and its shape:
# calibration names them when the encoder's activations are not finite.
_last_batch: Tuple[Tuple[int, ...], List[str]] = ((), [])


def describe_batch(speech: torch.Tensor) -> str:
    """``"utt_id (path), ..."`` of the batch :func:`batch_windows` yielded
    last, if ``speech`` has its shape (batches are consumed as they come);
    "" when unknown."""
    shape, names = _last_batch
    return _listed(names) if names and tuple(speech.shape) == shape else ""


def batch_windows(
    windows: Sequence[List[Utterance]], batch_size: int, sample_rate: int = 16000,
    max_seconds: Optional[float] = None,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """:func:`iter_batches` on windows already made by :func:`pack`: each
    window's audio, 0.2 s of silence between its utterances, is one row; with
    ``max_seconds`` a row is cut there, and only the audio it keeps is read."""
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
                parts.append(load_audio(u.wav_path, sample_rate, None if left is None else left / sample_rate))
                filled += len(parts[-1])
                names.append(f"{u.utt_id} ({u.wav_path})")
            row = np.concatenate(parts)
            chunk.append(row if limit is None else row[:limit])
        lengths = torch.tensor([len(a) for a in chunk], dtype=torch.int64)
        speech = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.float32)
        for i, a in enumerate(chunk):
            speech[i, : len(a)] = torch.from_numpy(a)
        _last_batch = (tuple(speech.shape), names)
        yield speech, lengths


def select(utts: Sequence[Utterance], n: Optional[int]) -> List[Utterance]:
    """First ``n`` utterances after sorting by id (all of them if ``n`` is None)."""
    ordered = sorted(utts, key=lambda u: u.utt_id)
    return ordered if n is None else ordered[:n]


def calibration_utterances(calib_data: Union[str, Sequence[Utterance]], num_calib: Optional[int],
                           max_seconds: Optional[float] = None) -> List[Utterance]:
    """The calibration set: a data dir or a list of utterances, ``num_calib``
    of them, its audio checked (``check_calibration_audio``; with
    ``max_seconds``, the model's input window, only that much of each file)."""
    utts = read_data_dir(calib_data) if isinstance(calib_data, str) else list(calib_data)
    utts = select(utts, num_calib)
    if not utts:
        raise ValueError("the calibration set is empty: no utterances to calibrate on")
    check_calibration_audio(utts, max_seconds=max_seconds)
    return utts
