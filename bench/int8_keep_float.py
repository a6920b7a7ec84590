#!/usr/bin/env python3
"""Int8 on a compressed exp dir with its most int8-sensitive linears kept float.

    python bench/int8_keep_float.py --model base --exp EXP_DIR --keep 4 8 \\
        [--num_calib 32] [--calib_extra arctic_cathy_a an4 ljspeech] [--num_eval 60] \\
        --out_dir bench/results/int8_keep_float_base

Each linear int8 would quantize is made int8 alone, the rest float, and the
relative error of the encoder output on four packed 30 s calibration windows
(pareto.py's calibration pool, the config's ``num_calib`` of it) ranks them.
Rows, decoded on pareto.py's evaluation utterances in one run: dense, dense +
int8, LiteASR mode, the exp dir float, all int8, and int8 with the top
``--keep`` linears float. Writes ``int8.md``, ``int8.json`` and the ranking.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from espnet_lowrank.api import load_compressed  # noqa: E402
from espnet_lowrank.config import LowRankConfig  # noqa: E402
from espnet_lowrank.data import batch_windows, pack, read_data_dir, select  # noqa: E402
from espnet_lowrank.measure import encoder_linear_params, encoder_mb  # noqa: E402
from espnet_lowrank.pipeline import calibrate_model, compress  # noqa: E402
from espnet_lowrank.quantize import int8_error_by_layer, quantize_linears_  # noqa: E402
from pareto import CALIB_SET, _wer_cell, calibration_pool, decode_wer, dense_exp_dir  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="Whisper name or the dense exp dir")
    p.add_argument("--exp", required=True, help="the compressed exp dir (float)")
    p.add_argument("--keep", nargs="+", type=int, default=[4, 8], help="how many linears to keep float")
    p.add_argument("--thetas", default="0.97,0.99", help="LiteASR mode θ pair")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--sets", nargs="+", default=[CALIB_SET, "vctk"])
    p.add_argument("--num_calib", type=int, default=32)
    p.add_argument("--calib_extra", nargs="*", default=["arctic_cathy_a", "an4", "ljspeech"])
    p.add_argument("--num_eval", type=int, default=60)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work_dir", default="exp/bench_int8")
    p.add_argument("--out_dir", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from espnet2.bin.asr_inference import Speech2Text

    dense_exp = dense_exp_dir(args.model, args.work_dir)
    compressed, _ = load_compressed(args.exp)
    compressed.eval()
    s2t = Speech2Text(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"), device="cpu",
                      **yaml.safe_load((dense_exp / "decode.yaml").read_text()))
    dense = s2t.asr_model.eval()

    n_calib = yaml.safe_load(Path(args.exp, "report.json").read_text()).get("num_calib") or 128
    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET), require_text=True)
    pool = calibration_pool(librispeech, args.data, args.num_calib, args.calib_extra, n_calib, args.num_eval)
    eval_sets = {s: (librispeech[args.num_calib:] if s == CALIB_SET
                     else read_data_dir(os.path.join(args.data, s), require_text=True))[: args.num_eval]
                 for s in args.sets}
    assert not {u.utt_id for u in pool[:n_calib]} & {u.utt_id for us in eval_sets.values() for u in us}

    windows = pack(select(pool[:n_calib], None), 30.0)
    picked = [windows[i * len(windows) // 4] for i in range(4)]
    speech, lengths = next(batch_windows(picked, 4))
    started = time.time()
    errors = int8_error_by_layer(compressed.encoder, lambda: compressed.encode(speech, lengths)[0])
    ranking = sorted(errors, key=errors.get, reverse=True)
    os.makedirs(args.out_dir, exist_ok=True)
    Path(args.out_dir, "int8_error_by_layer.txt").write_text(
        "".join(f"{errors[n]:.5f} {n}\n" for n in ranking))
    print(f"int8 error ranked over {len(ranking)} linears in {time.time() - started:.0f}s; top: "
          f"{[(n, round(errors[n], 4)) for n in ranking[:8]]}", flush=True)

    ta, tf = (float(x) for x in args.thetas.split(","))
    stats = calibrate_model(dense, librispeech[: args.num_calib], LowRankConfig())
    liteasr = compress(dense, config=LowRankConfig(theta_attention=ta, theta_feed_forward=tf), stats=stats).model

    def int8(model, keep=()):
        q = copy.deepcopy(model)
        quantize_linears_(q.encoder, keep_float=keep)
        return q.eval()

    variants = [("dense", dense, dense), ("dense + int8", int8(dense), dense),
                (f"LiteASR mode θ ({ta}, {tf})", liteasr, liteasr),
                ("exp dir, float", compressed, compressed), ("exp dir, all int8", int8(compressed), compressed)]
    variants += [(f"exp dir, int8, top {k} float", int8(compressed, ranking[:k]), compressed) for k in args.keep]
    rows = []
    for name, model, float_model in variants:
        s2t.asr_model = model
        wer, detail = decode_wer(s2t, eval_sets, os.path.join(args.out_dir, "hyps", name.replace(" ", "_")))
        rows.append({"name": name, "wer": wer, "wer_detail": detail, "enc_mb": encoder_mb(model),
                     "params": encoder_linear_params(float_model)})
        print(f"{name}: WER {wer}, {rows[-1]['enc_mb']:.1f} MB  [{time.time() - started:.0f}s]", flush=True)

    head = ["name"] + [f"WER {s} (S / D / I)" for s in args.sets] + ["params %", "enc MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["name"]] + [_wer_cell(r, s) for s in args.sets] + [
            f"{100 * r['params'] / rows[0]['params']:.1f}", f"{r['enc_mb']:.1f}"]) + " |")
    meta = (f"exp dir `{args.exp}`; int8 error ranked on 4 packed calibration windows of its {n_calib} "
            f"utterances; kept float: " + "; ".join(f"top {k}: {ranking[:k]}" for k in args.keep) +
            f"; {args.num_eval} utterances per set; run took {time.time() - started:.0f} s.")
    Path(args.out_dir, "int8.md").write_text("\n".join(lines) + "\n\n" + meta + "\n")
    Path(args.out_dir, "int8.json").write_text(json.dumps({"rows": rows, "errors": errors, "meta": meta}, indent=1))
    print("\n".join(lines) + "\n\n" + meta)


if __name__ == "__main__":
    main()
