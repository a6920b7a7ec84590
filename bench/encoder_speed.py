#!/usr/bin/env python
"""Dense vs compressed encoder latency, measured in one run.

    python bench/encoder_speed.py --model tiny.en --device cpu --budget 0.5
    python bench/encoder_speed.py --model base --device cpu --budget 0.5
    python bench/encoder_speed.py --model exp/conformer --device cpu          # ESPnet exp dir
    python bench/encoder_speed.py --model base --device cuda --budget 0.5     # batch 1 and 16, fp16

The dense model is exported (Whisper names, cached under --work_dir) or loaded
(an exp dir with config.yaml + model.pth), compressed with ``--budget F``
(global allocation, ``espnet_lowrank.budget``) or else with the family's
default config ``conf/lowrank/<family>.yaml``, and both encoders are timed on
the same input, alternating, after warm-up; the table shows medians.

efficiency = (dense_ms / compressed_ms) / (dense_flops / compressed_flops):
1.0 means the FLOPs saved turn fully into time saved.

``--latency_aware``: before the encoders are timed, each factored layer is
timed alone against its dense original on the input it gets (first
``--threads`` and ``--seconds`` value), and put back dense where its factor
pair is not faster. Layers inside reduced-dimension attention stay factored.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import List, Optional

import torch

from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir, select
from espnet_lowrank.families import family_for
from espnet_lowrank.measure import cpu_model, encoder_flops, encoder_linear_params
from espnet_lowrank.nn_utils import set_submodule
from espnet_lowrank.pipeline import compress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHISPER_NAMES = ("tiny.en", "tiny", "base.en", "base", "small.en", "small")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CALIB = os.path.join(os.path.dirname(REPO), "shared", "data", "librispeech_train-clean-100")


def load_dense(model: str, work_dir: str):
    if os.path.isdir(model):
        exp = model
    elif model in WHISPER_NAMES:
        exp = os.path.join(work_dir, f"whisper_{model}")
        if not os.path.isfile(os.path.join(exp, "model.pth")):
            import subprocess

            subprocess.run(
                [sys.executable, "-m", "espnet_lowrank.bin.export_whisper", "--model", model,
                 "--output_dir", exp],
                check=True, cwd=REPO,
            )
    else:
        raise SystemExit(f"--model must be one of {WHISPER_NAMES} or an exp dir, got {model!r}")
    dense, _ = load_asr_model(os.path.join(exp, "config.yaml"), os.path.join(exp, "model.pth"))
    return dense.eval()


def lowrank_config(family: str, args) -> LowRankConfig:
    path = os.path.join(REPO, "conf", "lowrank", f"{family}.yaml")
    config = LowRankConfig.from_yaml(path) if os.path.isfile(path) else LowRankConfig()
    values = config.to_dict()
    if args.budget is not None:
        values["budget"] = args.budget
    if args.rank_multiple is not None:
        values["rank_multiple"] = args.rank_multiple
    if args.attention is not None:
        values["attention"] = args.attention
    values["num_calib"] = args.num_calib
    return LowRankConfig.from_dict(values)


def dummy_input(seconds: float, batch: int, device, dtype=torch.float32):
    samples = int(seconds * 16000)
    g = torch.Generator().manual_seed(0)
    speech = 0.01 * torch.randn(batch, samples, generator=g)
    return speech.to(device=device, dtype=dtype), torch.full((batch,), samples, dtype=torch.long, device=device)


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def paired_times(encoders, speech, lengths, device, repeats, warmup):
    """Median ms per ``encode`` callable, timed alternately after warm-up."""
    for _ in range(warmup):
        for encode in encoders:
            encode(speech, lengths)
    _sync(device)
    times = [[] for _ in encoders]
    for _ in range(repeats):
        for i, encode in enumerate(encoders):
            _sync(device)
            start = time.perf_counter()
            encode(speech, lengths)
            _sync(device)
            times[i].append(1000 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


@torch.inference_mode()
def keep_dense_where_slower_(compressed, dense, result, speech, lengths, device, repeats, warmup):
    """The latency-aware plan: time every factored layer against its dense
    original on the input it gets in ``compressed``; put the dense layer back
    where the factor pair is not faster. Returns the names put back."""
    reduced = [n for n, mode in result.attention.items() if mode == "reduced"]
    names = [n for n in result.plan.ranks if not any(n.startswith(r + ".") for r in reduced)]
    shapes = {}

    def record(name):
        def hook(_module, args):
            shapes.setdefault(name, args[0].shape)  # returns None: the input is left as it is
        return hook

    hooks = [compressed.encoder.get_submodule(n).register_forward_pre_hook(record(n)) for n in names]
    compressed.encode(speech, lengths)
    for h in hooks:
        h.remove()
    put_back, dense_total, factored_total = [], 0.0, 0.0
    for n in names:
        x = torch.randn(shapes[n], device=speech.device, dtype=speech.dtype)
        dense_layer, factored = dense.encoder.get_submodule(n), compressed.encoder.get_submodule(n)
        d_ms, c_ms = paired_times([lambda x, _: dense_layer(x), lambda x, _: factored(x)], x, None,
                                  device, repeats, warmup)
        dense_total, factored_total = dense_total + d_ms, factored_total + min(c_ms, d_ms)
        if c_ms >= d_ms:
            set_submodule(compressed.encoder, n, copy.deepcopy(dense_layer))
            put_back.append(n)
    print(f"# latency-aware: {len(put_back)} of {len(names)} factored layers put back dense: {put_back}")
    print(f"# those {len(names)} layers alone: dense {dense_total:.1f} ms, after {factored_total:.1f} ms "
          "(sum of per-layer medians)")
    return put_back


def machine() -> str:
    text = f"{platform.system()} {platform.machine()}, {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="tiny.en | base | ... | ESPnet exp dir")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--budget", type=float, default=None, help="kept FLOPs fraction (global allocation)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads")
    p.add_argument("--seconds", type=float, nargs="+", default=None,
                   help="input lengths; default 30 (Whisper) or 10 30 (ESPnet encoders)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="default 1 (CPU) or 1 16 (GPU)")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default fp32 (CPU), fp16 (GPU)")
    p.add_argument("--calib_data", default=DEFAULT_CALIB, help="Kaldi data dir for calibration")
    p.add_argument("--num_calib", type=int, default=16)
    p.add_argument("--rank_multiple", type=int, default=None)
    p.add_argument("--attention", default=None, choices=["auto", "reduced", "dense"])
    p.add_argument("--latency_aware", action="store_true",
                   help="put a factored layer back dense where its factor pair times slower")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--work_dir", default=os.path.join(REPO, "exp", "bench"))
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    dtype = DTYPES[args.dtype or ("fp32" if args.device == "cpu" else "fp16")]
    if args.latency_aware and dtype != torch.float32:
        raise SystemExit("--latency_aware: fp32 only (the FLOP count runs the fp32 model)")
    batches = args.batch or ([1] if args.device == "cpu" else [1, 16])

    torch.manual_seed(0)
    dense = load_dense(args.model, args.work_dir)
    family = family_for(dense.encoder)
    seconds = args.seconds or ([30.0] if family.name == "whisper" else [10.0, 30.0])
    config = lowrank_config(family.name, args)
    utts = select(read_data_dir(args.calib_data), args.num_calib)
    started = time.perf_counter()
    result = compress(dense, utts, config)
    compress_s = time.perf_counter() - started
    compressed = result.model.eval()
    reduced = sum(v == "reduced" for v in result.attention.values())
    print(f"# compressed in {compress_s:.1f}s: {len(result.plan.ranks)}/{len(result.plan.decisions)} layers "
          f"factored, attention {reduced}/{len(result.attention)} reduced, "
          f"linear params {result.report['encoder_linear_params_compressed']}/"
          f"{result.report['encoder_linear_params_dense']}")
    print(f"# ranks: {json.dumps(result.plan.ranks)}")

    device = args.device
    dense.to(device=device, dtype=dtype)
    compressed.to(device=device, dtype=dtype)
    if args.latency_aware:
        torch.set_num_threads(args.threads[0] if device == "cpu" else torch.get_num_threads())
        speech, lengths = dummy_input(seconds[0], batches[0], device, dtype)
        keep_dense_where_slower_(compressed, dense, result, speech, lengths, device, 3 * args.repeats,
                                 args.warmup)
        print(f"# linear params after: {encoder_linear_params(compressed)}/"
              f"{result.report['encoder_linear_params_dense']}")
    flops = {s: (encoder_flops(dense, s), encoder_flops(compressed, s)) for s in seconds}
    variants = [("eager", dense.encode, compressed.encode)]
    if args.compile:  # compile the bound encode (torch.compile(module) would only wrap forward)
        variants.append(("compile", torch.compile(dense.encode), torch.compile(compressed.encode)))
    threads = args.threads if device == "cpu" else [torch.get_num_threads()]
    rows = []
    header = (f"{'model':<16}{'device':<7}{'mode':<8}{'dtype':<6}{'thr':>4}{'batch':>6}{'sec':>6}"
              f"{'dense_ms':>10}{'comp_ms':>10}{'lat_ratio':>10}{'flop_ratio':>11}{'efficiency':>11}")
    print(header)
    for n in threads:
        torch.set_num_threads(n)
        for batch in batches:
            for s in seconds:
                speech, lengths = dummy_input(s, batch, device, dtype)
                for mode, d_model, c_model in variants:
                    d_ms, c_ms = paired_times([d_model, c_model], speech, lengths, device,
                                              args.repeats, args.warmup)
                    lat_ratio = c_ms / d_ms
                    flop_ratio = flops[s][1] / flops[s][0]
                    eff = (d_ms / c_ms) / (flops[s][0] / flops[s][1])
                    row = dict(model=os.path.basename(args.model.rstrip("/")), device=device, mode=mode,
                               dtype=str(dtype).replace("torch.", ""), threads=n, batch=batch, seconds=s,
                               dense_ms=round(d_ms, 2), compressed_ms=round(c_ms, 2),
                               latency_ratio=round(lat_ratio, 4), flop_ratio=round(flop_ratio, 4),
                               efficiency=round(eff, 4))
                    rows.append(row)
                    print(f"{row['model']:<16}{device:<7}{mode:<8}{row['dtype'][:5]:<6}{n:>4}{batch:>6}{s:>6g}"
                          f"{d_ms:>10.1f}{c_ms:>10.1f}{lat_ratio:>10.3f}{flop_ratio:>11.3f}{eff:>11.3f}")
                    print(f"efficiency {eff:.3f} = ({d_ms:.1f}/{c_ms:.1f}) / (1/{flop_ratio:.3f})  "
                          f"[{row['model']} {device} {mode} threads={n} batch={batch} {s:g}s]")
    print(f"# command: {' '.join([os.path.relpath(sys.argv[0], REPO)] + (argv if argv is not None else sys.argv[1:]))}")
    print(f"# machine: {machine()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "machine": machine(), "argv": sys.argv, "ranks": result.plan.ranks,
                       "attention": result.attention}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
