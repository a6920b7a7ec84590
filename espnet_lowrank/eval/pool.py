"""Which utterances calibrate and which evaluate in the benchmarks: the
calibration pool (the first LibriSpeech utterances, then extra sets in turn),
the held-out sets outside it, and the dense exp dir everything starts from."""

import itertools
import os
from pathlib import Path

from espnet_lowrank.data import read_data_dir
from espnet_lowrank.whisper.export import export_whisper

CALIB_SET = "librispeech_train-clean-100"
# the sets that fill the shipped configs' 128-utterance pool after --num_calib LibriSpeech
CALIB_EXTRA = ("arctic_cathy_a", "an4", "ljspeech")


def calibration_pool(librispeech: list, data: str, num_calib: int, calib_extra, n_max: int,
                     num_eval: int = 0):
    """The first ``num_calib`` of ``librispeech`` (read once by the caller), then
    (with ``calib_extra``) the utterances of those sets in turn; at least ``n_max``.
    LibriSpeech itself may be an extra set: its utterances after the ``num_eval``
    evaluation ones that follow the first ``num_calib``."""
    pool = librispeech
    if calib_extra:
        extra = [librispeech[num_calib + num_eval:] if s == CALIB_SET else read_data_dir(os.path.join(data, s))
                 for s in calib_extra]
        pool = pool[:num_calib] + [u for row in itertools.zip_longest(*extra) for u in row if u is not None]
        if n_max > len(pool):
            raise SystemExit(f"a config asks for {n_max} calibration utterances; "
                             f"--num_calib {num_calib} + --calib_extra give {len(pool)}")
    return pool


def heldout_sets(data, sets, librispeech, pool):
    """name -> held-out utterances: not in ``pool`` by id or by transcript.
    ``SET:N`` keeps the first N of a set's held-out utterances."""
    ids, texts = {u.utt_id for u in pool}, {u.text for u in pool}
    out = {}
    for spec in sets:
        name, _, n = spec.partition(":")
        if n and not n.isdigit():
            raise SystemExit(f"--sets {spec}: expected SET or SET:N with N a whole number")
        utts = librispeech if name == CALIB_SET else read_data_dir(os.path.join(data, name), require_text=True)
        kept = [u for u in utts if u.utt_id not in ids and u.text not in texts]
        out[name] = kept[: int(n)] if n else kept
        if not out[name]:
            raise SystemExit(f"{name}: no held-out utterances left after the calibration pool")
    return out


def first_utterances(librispeech, data, sets, start, num):
    """name -> the first ``num`` utterances (with text) of each set;
    LibriSpeech's from ``start`` on, after its calibration ones."""
    out = {}
    for s in sets:
        utts = librispeech if s == CALIB_SET else read_data_dir(os.path.join(data, s), require_text=True)
        first = start if s == CALIB_SET else 0
        out[s] = utts[first: first + num]
    return out


def pool_and_unseen(data, pool_size):
    """(the calibration pool of ``pool_size`` utterances, the utterances in
    neither it nor any evaluation set: ``arctic_misc`` and the LJSpeech ones
    the pool leaves out)."""
    librispeech = read_data_dir(os.path.join(data, CALIB_SET))
    pool = calibration_pool(librispeech, data, 32, list(CALIB_EXTRA), pool_size)[:pool_size]
    pooled = {u.utt_id for u in pool}
    unseen = [u for s in ("arctic_misc", "ljspeech") for u in read_data_dir(os.path.join(data, s))
              if u.utt_id not in pooled]
    return pool, unseen


def dense_exp_dir(model: str, work_dir: str) -> Path:
    """``model`` itself if it is an exp dir, else the Whisper model of that name
    exported once into ``work_dir/whisper_<model>``."""
    if os.path.isdir(model):
        return Path(model)
    out = Path(work_dir) / f"whisper_{model}"
    if not (out / "model.pth").is_file():
        export_whisper(model, str(out))
    return out
