"""Kaldi-style data dirs (``wav.scp``, optionally ``text``, ``utt2spk``, ``spk2utt``) read,
written, and imported from LibriSpeech. Relative ``wav.scp`` paths resolve against the data dir;
ESPnet-style piped commands (``... |``) are not supported."""

import io
import logging
import os
import stat
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from espnet_lowrank.utils import atomic_write_text

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


@dataclass
class Utterance:
    """An id (no whitespace), an absolute audio path, a transcript (None without ``text``) and
    a speaker (None: the utt_id, when written)."""

    utt_id: str
    wav_path: str
    text: Optional[str] = None
    speaker: Optional[str] = None


def read_kv_file(path: str, allow_empty_value: bool) -> Dict[str, str]:
    """A Kaldi ``<key> <value>`` file; a duplicate, a bad line or non-UTF-8 bytes raise naming the line."""
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
            raise ValueError(f"{path}:{lineno}: malformed line (expected '<utt_id> <value>'): "
                             f"{raw.rstrip()!r}")
        key = parts[0]
        value = parts[1].strip() if len(parts) == 2 else ""
        if key in out:
            raise ValueError(f"{path}:{lineno}: duplicate utterance id {key!r}")
        out[key] = value
    return out


def read_data_dir(path: str, require_text: bool = False) -> List[Utterance]:
    """Utterances of a Kaldi-style data dir, sorted by id, with absolute paths.

    FileNotFoundError for a missing dir, ``wav.scp``, audio file or (``require_text``) ``text``;
    ValueError for an empty, malformed or non-UTF-8 file, duplicate ids, piped commands, audio
    paths that are not regular files (never opened), or ``text`` ids not in ``wav.scp``."""
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
    kinds = {u: file_kind(w) for u, w in resolved.items()}
    missing = [f"{u} -> {w}" for u, w in resolved.items() if kinds[u] is None]
    if missing:
        raise FileNotFoundError(f"{scp}: {len(missing)} of {len(resolved)} audio files are missing: "
                                f"{listed(missing, '; ')}")
    irregular = [f"{u} -> {w} ({kinds[u]}, not a regular file)" for u, w in resolved.items()
                 if kinds[u] != "file"]
    if irregular:
        raise ValueError(f"{scp}: {len(irregular)} of {len(resolved)} audio paths are not audio files: "
                         f"{listed(irregular, '; ')}")
    texts: Optional[Dict[str, str]] = None
    text_path = os.path.join(path, "text")
    if os.path.isfile(text_path):
        texts = read_kv_file(text_path, allow_empty_value=True)
        extra = sorted(set(texts) - set(resolved))
        if extra:
            raise ValueError(f"{text_path}: ids not in wav.scp: {listed(extra)}")
    elif require_text:
        raise FileNotFoundError(f"no text file in data directory {path} (transcripts are required)")
    if require_text and texts is not None:
        lacking = sorted(set(resolved) - set(texts))
        if lacking:
            raise ValueError(f"{text_path}: no transcript for {len(lacking)} utterances: "
                             + ", ".join(lacking[:_MAX_LISTED]))
    u2s = os.path.join(path, "utt2spk")
    speakers = read_kv_file(u2s, allow_empty_value=False) if os.path.isfile(u2s) else {}
    return [Utterance(u, resolved[u], None if texts is None else texts.get(u), speakers.get(u))
            for u in sorted(resolved)]


def file_kind(path: str) -> Optional[str]:
    """"file" for a regular file (or a link to one), None if nothing is there, else what it is
    ("a FIFO", ...). Never opens it: opening a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:  # e.g. a dangling link loop, no permission on a parent
        return f"cannot stat: {e.strerror}"
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def listed(items: List[str], sep: str = ", ") -> str:
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return sep.join(items[:_MAX_LISTED]) + more


def write_data_dir(path: str, utts: Sequence[Utterance]) -> None:
    """Write ``wav.scp`` (absolute paths), ``utt2spk``, ``spk2utt`` and, when every utterance has a
    transcript, ``text``: sorted by id, atomically. Refuses empty, duplicate or whitespace ids and
    a mix of with/without text."""
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
    atomic_write_text(os.path.join(path, "wav.scp"),
                      "".join(f"{u.utt_id} {os.path.abspath(u.wav_path)}\n" for u in ordered))
    if all(with_text):
        atomic_write_text(os.path.join(path, "text"),
                          "".join(" ".join([u.utt_id] + u.text.split()) + "\n" for u in ordered))
    spk_of = {u.utt_id: (u.speaker or u.utt_id) for u in ordered}
    atomic_write_text(os.path.join(path, "utt2spk"), "".join(f"{u} {s}\n" for u, s in spk_of.items()))
    spk2utt: Dict[str, List[str]] = {}
    for u, s in spk_of.items():
        spk2utt.setdefault(s, []).append(u)
    atomic_write_text(os.path.join(path, "spk2utt"),
                      "".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))


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
    """Write ``dst`` (absolute paths) from a Kaldi data dir or a LibriSpeech tree ``src``; returns
    the utterances written."""
    utts = read_data_dir(src) if os.path.isfile(os.path.join(src, "wav.scp")) else import_librispeech(src)
    write_data_dir(dst, utts)
    logger.info("prepared %d utterances from %s in %s", len(utts), src, dst)
    return utts


def select(utts: Sequence[Utterance], n: Optional[int]) -> List[Utterance]:
    """First ``n`` utterances after sorting by id (all of them if ``n`` is None)."""
    ordered = sorted(utts, key=lambda u: u.utt_id)
    return ordered if n is None else ordered[:n]
