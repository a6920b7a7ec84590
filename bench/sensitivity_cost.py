#!/usr/bin/env python3
"""What the sensitivity step (``ranks.budget``) costs, and that its cache of
dense outputs changes no number: every probe of a config measured by
``measure_sensitivity`` (modules before the probed layer return cached dense
outputs) and by a whole encoder forward per probe, in the same run.

    python bench/sensitivity_cost.py [--config conf/lowrank/whisper.yaml] [--model tiny.en] \\
        [--num_calib 32] [--work_dir exp/bench_cost]

Calibration is the config's (``num_calib`` LibriSpeech utterances, packed as
it says); the probes run on the first ``NUM_WINDOWS`` windows, as in compress.
"""

import argparse
import os
import time
from pathlib import Path

import torch

from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.batches import batch_windows
from espnet_lowrank.budget import layer_probes
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.pool import CALIB_SET, dense_exp_dir
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.families import family_for
from espnet_lowrank.pipeline import calibrate_model, pack
from espnet_lowrank.progress import progress
from espnet_lowrank.sensitivity import NUM_WINDOWS, _encoder_output, _projector, measure_sensitivity

REPO = Path(__file__).resolve().parents[1]


def whole_forward(model, batches, probes):
    """The reference: one whole encoder forward per probe."""
    modules = dict(model.encoder.named_modules())
    with torch.no_grad():
        dense = [_encoder_output(model, b) for b in batches]
        energy = sum(float(d.double().pow(2).sum()) for d in dense)
        lost = {n: {} for n in probes}
        for n, (spec, ranks) in progress(list(probes.items()), desc="whole forward", unit="layer"):
            for k in ranks:
                handle = modules[n].register_forward_hook(_projector(spec, k))
                lost[n][k] = sum(float((_encoder_output(model, b) - d).double().pow(2).sum())
                                 for b, d in zip(batches, dense)) / energy
                handle.remove()
    return lost


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "conf" / "lowrank" / "whisper.yaml"))
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--num_calib", type=int, default=32)
    p.add_argument("--work_dir", default="exp/bench_cost")
    args = p.parse_args(argv)

    config = LowRankConfig.from_yaml(args.config)
    exp = dense_exp_dir(args.model, args.work_dir)
    model, _ = load_asr_model(str(exp / "config.yaml"), str(exp / "model.pth"))
    model.eval()
    n = config.calibration.num_calib or args.num_calib
    utts = read_data_dir(os.path.join(args.data, CALIB_SET))[:n]
    torch.manual_seed(config.calibration.seed)
    windows = pack(utts, config.calibration.pack_seconds)
    stats = calibrate_model(model, utts, config)
    targets = family_for(model.encoder).target_layers(model.encoder, config)
    probes = layer_probes({t: spectrum(stats[t]) for t in targets}, targets, config)
    batches = list(batch_windows(windows[:NUM_WINDOWS], config.calibration.batch_size))
    count = sum(len(r) for _, r in probes.values())

    started = time.perf_counter()
    cached = measure_sensitivity(model, batches, probes)
    cached_s = time.perf_counter() - started
    started = time.perf_counter()
    whole = whole_forward(model, batches, probes)
    whole_s = time.perf_counter() - started
    worst = max(abs(cached[n][k] - whole[n][k]) / max(whole[n][k], 1e-30) for n in whole for k in whole[n])
    print(f"{args.model}, {Path(args.config).name}: {count} probes on {len(windows[:NUM_WINDOWS])} windows, "
          f"{torch.get_num_threads()} threads")
    print(f"cached dense outputs {cached_s:.0f} s, whole forward per probe {whole_s:.0f} s, "
          f"ratio {cached_s / whole_s:.2f}; largest relative difference {worst:.3g}")


if __name__ == "__main__":
    main()
