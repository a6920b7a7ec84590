#!/usr/bin/env python
"""Peak memory and time of recovery steps, with every encoder activation kept
and with each block recomputed in the backward pass (what recovery does,
``recovery.checkpointed``), under glibc's default allocator settings and with
``MALLOC_MMAP_THRESHOLD_`` fixed (glibc otherwise keeps freed tensors of up to
32 MB in its heap, where they fragment it). Each variant runs in its own
process on the same compressed exp dir, dense exp dir and utterances.
(That recomputing changes no number: tests/test_sequential.py, tests/test_espnet_conformer.py.)

    python bench/recovery_memory.py --dense DENSE_EXP --compressed EXP --data CALIB_DIR \\
        [--utts 40] [--steps 3] [--objective decoder+tokens] [--thresholds default 8388608]

Prints one row per variant (peak RSS of the process, seconds of the whole
recover_ call: targets, transcripts, loss passes and steps) and the ratios to
the first row.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time



def child(args):
    from espnet_lowrank.api import load_compressed
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.data import read_data_dir
    from espnet_lowrank.families import family_for
    from espnet_lowrank.recovery import recover_

    dense, _ = load_asr_model(f"{args.dense}/config.yaml", f"{args.dense}/model.pth")
    model, _ = load_compressed(args.compressed)
    utts = read_data_dir(args.data)[: args.utts]
    blocks = family_for(model.encoder).blocks if args.recompute else None
    started = time.perf_counter()
    report = recover_(model, dense.eval(), utts, args.steps, args.lr, batch_size=4, objective=args.objective,
                      pack_seconds=30, recompute_blocks=blocks)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
                      "loss_after": report["recovery_loss_after"]}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", required=True, help="the dense exp dir")
    p.add_argument("--compressed", required=True, help="a compressed exp dir of the same model")
    p.add_argument("--data", required=True, help="a Kaldi data dir of calibration audio")
    p.add_argument("--utts", type=int, default=40)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--objective", default="decoder+tokens")
    p.add_argument("--thresholds", nargs="+", default=["default", "8388608"],
                   help="MALLOC_MMAP_THRESHOLD_ values in bytes; 'default' leaves glibc's")
    p.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)  # the child's side
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    rows = []
    for threshold in args.thresholds:
        for recompute in (False, True):
            env = dict(os.environ)
            if threshold != "default":
                env["MALLOC_MMAP_THRESHOLD_"] = threshold
            cmd = [sys.executable, __file__, "--child", "--dense", args.dense, "--compressed", args.compressed,
                   "--data", args.data, "--utts", str(args.utts), "--steps", str(args.steps), "--lr", str(args.lr),
                   "--objective", args.objective] + (["--recompute"] if recompute else [])
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["variant"] = f"{'recomputed' if recompute else 'kept'}, MALLOC_MMAP_THRESHOLD_={threshold}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    first = rows[0]
    print(f"\n{args.steps} steps of {args.objective} recovery, {args.utts} utterances of {args.data}\n")
    print("| activations, allocator | peak RSS MB | seconds | × peak | × seconds | loss after |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak_rss_mb']} | {r['seconds']} | {r['peak_rss_mb'] / first['peak_rss_mb']:.2f} "
              f"| {r['seconds'] / first['seconds']:.2f} | {r['loss_after']:.10g} |")


if __name__ == "__main__":
    main()
