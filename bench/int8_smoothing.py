#!/usr/bin/env python3
"""Where a compressed Whisper encoder's dynamic int8 error comes from, and
whether SmoothQuant-style smoothing of the linears' inputs lowers it.

Dynamic int8 quantizes each linear's input with one scale per tensor, so input
channels with large ranges (Whisper's GELU outputs reach 200 in base's later
blocks, against a median channel maximum of 11) push the others into a few
levels. Smoothing divides input channel j by s_j = max|x_j|^β / max|W[:, j]|^(1−β)
and multiplies weight column j by s_j, which keeps W x:
- after a LayerNorm (q/k/v, fc1), the division folds into its weight and bias;
- before ``attn.out``, it folds into the value projection's output rows;
- before fc2 (``mlp.2``), GELU sits in between, so the division stays a
  run-time division (``ScaledActivation``).
The rewrite is ``espnet_lowrank/smoothing.py``'s, which
``deployment.int8_smoothing`` ships with β fixed per kind of site and the
candidate chosen per model; this script sweeps β on an exp dir. max|x_j|
comes from a forward pass over the first 16 utterances of the exp dir's
calibration pool (bench/pareto.py's).

    python bench/int8_smoothing.py --exp_dir EXP --error [--betas 0.1 0.3] [--both 0.7 0.3]
    python bench/int8_smoothing.py --exp_dir EXP [--ln_beta 0.7] [--fc2_beta 0.3] \\
        --sets librispeech_train-clean-100 vctk arctic_cathy_a:100 pocketsphinx --out_dir RUN_DIR

``--error`` prints ‖int8 − float‖ / ‖float‖ of the encoder output on the
utterances in neither the pool nor an evaluation set (bench/int8_balance.py's),
with int8 on one role of linears at a time and with each smoothing. Otherwise
the exp dir is loaded by ``Speech2Text``, smoothed, quantized, and the held-out
sets of bench/heldout_eval.py decoded; the hypotheses go to
``RUN_DIR/hyps/<exp>_+_int8_smoothed`` for bench/score_hyps.py (``_norms`` or
``_fc2`` after it with one β only; with none: ``<exp>_+_int8``,
heldout_eval.py's int8 row, decoded the same way).
"""

import argparse
import copy
import os
from pathlib import Path

import torch

from espnet_lowrank import smoothing
from espnet_lowrank.api import load_compressed
from espnet_lowrank.batches import pack
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.decode import decode_sets, load_speech2text
from espnet_lowrank.eval.int8 import encode, int8_error, relative_error
from espnet_lowrank.eval.pool import CALIB_SET, heldout_sets, pool_and_unseen
from espnet_lowrank.eval.tables import sdi
from espnet_lowrank.families.whisper import FAMILY
from espnet_lowrank.nn_utils import set_submodule
from espnet_lowrank.quantize import quantize_linears_

REPO = Path(__file__).resolve().parents[1]

LABELS = {"attn_ln": "q/k/v", "mlp_ln": "fc1", "attn.value": "out", "mlp.1": "fc2"}  # by producer
FC2 = 3  # smoothing.SITES["whisper"] index of GELU -> fc2


def input_ranges(model, utts):
    """(block name, site index) -> max |x_j| of the site's input over ``utts``."""
    return smoothing.input_ranges(model, FAMILY, pack(utts, None), 4)


def _int8_copy(layer):
    layer = copy.deepcopy(layer)
    holder = torch.nn.ModuleDict({"x": layer})  # so that a dense Linear itself is swapped
    quantize_linears_(holder)
    return holder["x"]


def smoothed(model, ranges, ln_beta=None, fc2_beta=None):
    """A copy smoothed with one β at the LayerNorm and value sites, one before
    fc2, in every block (None: that kind not smoothed)."""
    kinds = (("norm", "value") if ln_beta is not None else ()) + (("activation",) if fc2_beta is not None else ())
    m = copy.deepcopy(model)
    smoothing.smooth_(m.encoder, FAMILY, ranges, kinds, {"norm": ln_beta, "value": ln_beta, "activation": fc2_beta})
    return m


def error_table(model, pool, selection, betas, both):
    reference = encode(model, selection)
    print(f"int8 error of the encoder output on {len(selection)} utterances outside the pool and the "
          f"evaluation sets: all linears {int8_error(model, selection, reference):.4f}", flush=True)
    for site in smoothing.sites_of(FAMILY):
        q = copy.deepcopy(model)
        for _, b in FAMILY.block_modules(q.encoder):
            for name in site.readers:
                set_submodule(b, name, _int8_copy(b.get_submodule(name)))
        print(f"  int8 on {LABELS[site.producer]} only: {relative_error(q, selection, reference):.4f}", flush=True)
    ranges = input_ranges(model, pool[:16])
    blocks = [name for name, _ in FAMILY.block_modules(model.encoder)]
    spread = ", ".join(f"{ranges[(b, FC2)].max():.1f} / {ranges[(b, FC2)].median():.1f}" for b in blocks)
    print(f"  fc2 input, max |x_j| over the pool's first 16 utterances, largest / median channel per block: {spread}",
          flush=True)
    for beta in betas:
        for label, kw in (("after the LayerNorms and before out", {"ln_beta": beta}),
                          ("before fc2", {"fc2_beta": beta})):
            m = smoothed(model, ranges, **kw)
            print(f"  β {beta}, smoothed {label}: float {relative_error(m, selection, reference):.1e}, "
                  f"int8 {int8_error(m, selection, reference):.4f}", flush=True)
    for ln_beta, fc2_beta in both:
        m = smoothed(model, ranges, ln_beta, fc2_beta)
        print(f"  β {ln_beta} after the LayerNorms and before out, β {fc2_beta} before fc2: "
              f"int8 {int8_error(m, selection, reference):.4f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--error", action="store_true", help="print the int8 error table instead of decoding")
    p.add_argument("--betas", nargs="*", type=float, default=[0.1, 0.3, 0.5, 0.7],
                   help="with --error: the same β at every site of one kind")
    p.add_argument("--both", nargs=2, type=float, metavar=("LN_BETA", "FC2_BETA"), action="append", default=[],
                   help="with --error: also both smoothings at once")
    p.add_argument("--ln_beta", type=float, help="decode: smooth after the LayerNorms and before out")
    p.add_argument("--fc2_beta", type=float, help="decode: smooth before fc2")
    p.add_argument("--sets", nargs="+", default=["librispeech_train-clean-100", "vctk"])
    p.add_argument("--pool_size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_dir")
    args = p.parse_args(argv)
    exp = Path(args.exp_dir)
    if not (exp / "model.pth").is_file() or not (exp / "config.yaml").is_file():
        raise SystemExit(f"{exp}: not an exp dir (needs config.yaml and model.pth)")
    if not args.error and not args.out_dir:
        raise SystemExit("--out_dir is needed to decode (or give --error)")
    torch.set_num_threads(args.threads)
    pool, unseen = pool_and_unseen(args.data, args.pool_size)
    if args.error:
        model, _ = load_compressed(str(exp))
        return error_table(model.eval(), pool, unseen, args.betas, args.both)
    s2t = load_speech2text(exp)
    if args.ln_beta is not None or args.fc2_beta is not None:
        ranges = input_ranges(s2t.asr_model, pool[:16])
        s2t.asr_model = smoothed(s2t.asr_model.eval(), ranges, args.ln_beta, args.fc2_beta)
    quantize_linears_(s2t.asr_model.encoder)
    # unsmoothed: heldout_eval.py's int8 row; one kind of site only: named after it
    suffix = {(True, True): "_smoothed", (True, False): "_smoothed_norms", (False, True): "_smoothed_fc2",
              (False, False): ""}[(args.ln_beta is not None, args.fc2_beta is not None)]
    row = f"{exp.name}_+_int8{suffix}"
    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET), require_text=True)
    sets = heldout_sets(args.data, args.sets, librispeech, pool)
    results = decode_sets(s2t, sets, os.path.join(args.out_dir, "hyps", row))
    for name, decoded in results.items():
        s = decoded.score
        print(f"{row} {name}: {sdi(s.err, s.sub, s.dele, s.ins)}", flush=True)


if __name__ == "__main__":
    main()
