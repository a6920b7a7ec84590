"""Decode a Kaldi-style data dir with the stock ``espnet2.bin.asr_inference`` over ``nj`` jobs (local or
Slurm) into ``OUTPUT_DIR/1best_recog/text``. CLI: ``python -m espnet_lowrank.bin.decode``."""

import os
import sys
from typing import List, Optional

from espnet_lowrank.data import read_data_dir
from espnet_lowrank.jobs import run_jobs
from espnet_lowrank.utils import atomic_write_text


def split_keys(keys: List[str], nj: int) -> List[List[str]]:
    """Contiguous, nearly equal parts; never an empty part."""
    nj = max(1, min(nj, len(keys)))
    size, extra = divmod(len(keys), nj)
    bounds = [j * size + min(j, extra) for j in range(nj + 1)]  # the first ``extra`` parts get one more
    return [keys[start:end] for start, end in zip(bounds, bounds[1:])]


def decode(asr_exp: str, data: str, output_dir: str, nj: int = 1, backend: str = "local",
           inference_config: Optional[str] = None, model_file: Optional[str] = None,
           slurm_options: str = "") -> str:
    """Decode ``data`` with the exp dir's model; returns the merged text path."""
    utts = read_data_dir(data)  # validates the dir and every audio path first
    config = os.path.join(asr_exp, "config.yaml")
    model_file = model_file or os.path.join(asr_exp, "model.pth")
    inference_config = inference_config or os.path.join(asr_exp, "decode.yaml")
    for path in (config, model_file, inference_config):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"decoding needs {path}")
    logdir = os.path.join(output_dir, "logdir")
    os.makedirs(logdir, exist_ok=True)
    # ESPnet resolves relative wav paths against the cwd: hand it absolute ones.
    wav_scp = os.path.join(logdir, "wav.scp")
    atomic_write_text(wav_scp, "".join(f"{u.utt_id} {u.wav_path}\n" for u in utts))
    parts = split_keys([u.utt_id for u in utts], nj)
    commands, logs = [], []
    for j, keys in enumerate(parts, start=1):
        key_file = os.path.join(logdir, f"keys.{j}.scp")
        atomic_write_text(key_file, "".join(f"{k}\n" for k in keys))
        commands.append([
            sys.executable, "-m", "espnet_lowrank.launch", "-m", "espnet2.bin.asr_inference",
            "--ngpu", "0", "--batch_size", "1",
            "--data_path_and_name_and_type", f"{wav_scp},speech,sound",
            "--key_file", key_file,
            "--asr_train_config", config, "--asr_model_file", model_file,
            "--config", inference_config,
            "--output_dir", os.path.join(logdir, f"output.{j}"),
        ])
        logs.append(os.path.join(logdir, f"asr_inference.{j}.log"))
    run_jobs(commands, logs, backend=backend, slurm_options=slurm_options, desc="decoding")
    lines = []
    for j in range(1, len(parts) + 1):
        with open(os.path.join(logdir, f"output.{j}", "1best_recog", "text"), encoding="utf-8") as f:
            lines.extend(line if line.endswith("\n") else line + "\n" for line in f if line.strip())
    merged = os.path.join(output_dir, "1best_recog", "text")
    atomic_write_text(merged, "".join(sorted(lines)))
    return merged
