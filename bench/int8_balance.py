#!/usr/bin/env python3
"""How much dynamic int8 moves the encoder output of a factored Whisper, with
and without rank-space balancing (``espnet_lowrank.balance``), at several α.

    python bench/int8_balance.py [--model tiny.en] [--alphas 0.5 0.7 0.85] \\
        [--recovery_steps 30] [--threads 1]
    python bench/int8_balance.py --exp_dir EXP [--dense_exp DENSE_EXP] [--alphas ...] [--pool_size 128]

Factors: θ (0.98, 0.995), one pass over the first 32 LibriSpeech utterances
packed into 30 s windows; then the same factors after ``--recovery_steps``
end-to-end steps (objective decoder, lr 3e-4). Error: ‖int8 − float‖ / ‖float‖
of the encoder output on 4 held-out LibriSpeech + 4 VCTK utterances; the
dense encoder's own int8 error is printed beside it. Balancing with the
calibration statistics (what ``compress`` does) and with the RMS measured by a
forward pass over 8 calibration utterances are both shown.

With ``--exp_dir`` it sweeps α on a compressed exp dir instead (e.g. a
recovered Whisper base): the RMS comes from a forward pass over the first 16
utterances of its calibration pool (bench/pareto.py's, ``--pool_size``), and
the error is measured on audio that is in neither that pool nor any
evaluation set of bench/heldout_eval.py: ``arctic_misc`` and the LJSpeech
utterances the pool leaves out. Rebalancing with measured RMS reaches the same
factors whatever scaling they start from (the product rms_i · max|up[:, i]|
is invariant), so the exp dir's own α 0.7 balancing does not bias the sweep.
It also splits the stored model's int8 error between the factored layers and
the linears left dense.
"""

import argparse
import copy
import os
from pathlib import Path

import torch

from espnet_lowrank.api import load_compressed
from espnet_lowrank.apply import factorize_layers_
from espnet_lowrank.balance import ALPHA, balance_factors_, statistics_rms
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.int8 import encode, int8_error, measured_rms, relative_error
from espnet_lowrank.eval.pool import CALIB_SET, dense_exp_dir, pool_and_unseen
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.modules.lowrank_linear import LowRankConv1d, LowRankLinear
from espnet_lowrank.nn_utils import set_submodule
from espnet_lowrank.pipeline import calibrate_model, compress
from espnet_lowrank.quantize import quantize_linears_
from espnet_lowrank.recovery import recover_

REPO = Path(__file__).resolve().parents[1]


def exp_dir_sweep(args):
    exp = Path(args.exp_dir)
    for d in filter(None, (args.exp_dir, args.dense_exp)):
        if not (Path(d) / "model.pth").is_file() or not (Path(d) / "config.yaml").is_file():
            raise SystemExit(f"{d}: not an exp dir (needs config.yaml and model.pth)")
    model, _ = load_compressed(str(exp))
    factored = [n for n, m in model.encoder.named_modules() if isinstance(m, (LowRankLinear, LowRankConv1d))]
    pool, selection = pool_and_unseen(args.data, args.pool_size)
    rms = measured_rms(model, factored, pool[:16])
    reference = encode(model, selection)
    print(f"{exp.name}: {len(factored)} factored layers; error on {len(selection)} utterances "
          f"(arctic_misc + LJSpeech outside the pool)")
    if args.dense_exp:
        dense, _ = load_compressed(args.dense_exp)
        print(f"dense int8: {int8_error(dense, selection, encode(dense, selection)):.4f}")
        del dense
    print(f"as stored (α {ALPHA} from the calibration statistics): {int8_error(model, selection, reference):.4f}")
    for alpha in args.alphas:
        balanced = copy.deepcopy(model)
        balance_factors_(balanced.encoder, rms, alpha)
        print(f"α {alpha} (RMS from a forward pass): {int8_error(balanced, selection, reference):.4f}", flush=True)
    only_factors = copy.deepcopy(model)
    for name in factored:
        quantize_linears_(only_factors.encoder.get_submodule(name))
    others = copy.deepcopy(model)
    quantize_linears_(others.encoder)
    for name in factored:  # the factored layers back to float
        set_submodule(others.encoder, name, copy.deepcopy(model.encoder.get_submodule(name)))
    for label, q in (("the factored layers", only_factors), ("the other linears", others)):
        print(f"as stored, int8 on {label} only: {relative_error(q, selection, reference):.4f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--alphas", nargs="+", type=float, default=[0.5, 0.7, 0.85])
    p.add_argument("--recovery_steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work_dir", default="exp/bench_int8")
    p.add_argument("--exp_dir", help="sweep α on this compressed exp dir instead")
    p.add_argument("--dense_exp", help="with --exp_dir: also print this dense exp dir's own int8 error")
    p.add_argument("--pool_size", type=int, default=128, help="the exp dir's calibration pool size")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.exp_dir:
        return exp_dir_sweep(args)
    dense, _ = load_compressed(str(dense_exp_dir(args.model, args.work_dir)))
    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET))
    calib = librispeech[:32]
    held_out = librispeech[40:44] + read_data_dir(os.path.join(args.data, "vctk"))[:4]
    config = LowRankConfig(theta_attention=0.98, theta_feed_forward=0.995, pack_seconds=30, num_calib=32,
                           attention="dense")
    stats = calibrate_model(dense, calib, config)
    ranks = compress(dense, config=config, stats=stats).plan.ranks
    spectra = {n: spectrum(stats[n]) for n in ranks}
    plain = copy.deepcopy(dense)  # the same ranks, factored without balancing
    factorize_layers_(plain.encoder, ranks, spectra)
    print(f"dense int8: {int8_error(dense, held_out, encode(dense, held_out)):.4f}")
    recovered = copy.deepcopy(plain)
    recover_(recovered, dense, calib, args.recovery_steps, 3e-4, 4, "decoder", 30)
    for label, model in (("one pass", plain), (f"{args.recovery_steps} recovery steps", recovered.eval())):
        reference = encode(model, held_out)
        print(f"{label}: plain factors {int8_error(model, held_out, reference):.4f}")
        rms_sources = (statistics_rms(dense.encoder, ranks, spectra), measured_rms(model, ranks, calib[:8]))
        for alpha in args.alphas:
            errors = []
            for rms in rms_sources:
                balanced = copy.deepcopy(model)
                balance_factors_(balanced.encoder, rms, alpha)
                errors.append(int8_error(balanced, held_out, reference))
            print(f"{label}: α {alpha}: balanced from statistics {errors[0]:.4f}, "
                  f"from a forward pass {errors[1]:.4f}")


if __name__ == "__main__":
    main()
