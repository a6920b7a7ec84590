#!/usr/bin/env python
"""Where one utterance's end-to-end Whisper decode spends its time, stage by
stage, for the dense exp dir and compressed ones, float and int8.

    python bench/stage_profile.py --dense DENSE --exps BEST [--int8 dense whisper_tiny_best] \\
        [--data ../shared/data/librispeech_train-clean-100] [--utt 103-1240-0000] [--repeats 5] \\
        [--threads 1] [--out bench/results/stage_profile_tiny.en.md]

Each stage is timed by wrapping the function that runs it (exclusive times:
a stage's inner stages are taken off it); the table gives each stage's median
milliseconds over ``--repeats`` decodes after one warm-up, and for the
per-token stages the milliseconds per decoding step and the megabytes of
weights and cached keys/values each step reads (a step is a matrix-vector
product, so it runs at memory speed, not at arithmetic speed).
"""

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Dict, List

import torch

from espnet_lowrank.audio import load_audio
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.e2e import espnet_variant
from espnet_lowrank.measure import cpu_model
from espnet_lowrank.whisper import kv_cache

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                            "data", "librispeech_train-clean-100")
# (stage, what runs it); the inner stage of each pair is taken off the outer one
STAGES = [
    ("features", "log-mel spectrogram of the 30 s window"),
    ("encoder", "conv stem and encoder blocks"),
    ("cross_kv", "cross-attention keys/values, once per utterance"),
    ("decoder_blocks", "one token through the decoder blocks (self-attention cache)"),
    ("vocabulary", "embedding, final norm and the projection onto the vocabulary"),
    ("next_token", "suppressed tokens, log-softmax, loop guard"),
    ("search", "ESPnet's beam search around the scorer"),
]


class StageClock:
    """Accumulates wall time and calls per stage by wrapping the callables that run the stages."""

    def __init__(self):
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, owner, attr: str, stage: str):
        """Replace ``owner.attr`` with a timed call of it; returns the original."""
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.calls[stage] += 1

        setattr(owner, attr, timed)
        return inner


def instrument(s2t, clock: StageClock) -> None:
    enc, dec = s2t.asr_model.encoder, s2t.asr_model.decoder
    clock.wrap(enc, "log_mel", "features")
    clock.wrap(enc, "encode_mel", "encoder")
    clock.wrap(dec, "batch_score", "batch_score")
    clock.wrap(dec, "extend", "extend")
    clock.wrap(dec, "_split_cross", "cross_kv")


def exclusive(total: float, raw: Dict[str, float]) -> Dict[str, float]:
    """Per-stage seconds from the wrapped (inclusive) timers of one decode."""
    return {
        "features": raw["features"],
        "encoder": raw["encoder"],
        "cross_kv": raw["cross_kv"],
        "decoder_blocks": raw["decoder_blocks"],
        "vocabulary": raw["extend"] - raw["decoder_blocks"],
        "next_token": raw["batch_score"] - raw["extend"] - raw["cross_kv"],
        "search": total - raw["features"] - raw["encoder"] - raw["batch_score"],
    }


def step_megabytes(s2t) -> Dict[str, float]:
    """Bytes one decoding step reads: the blocks' weights (cross-attention keys/values projections excluded,
    they run once) plus the cached encoder keys/values, and the vocabulary projection's weight."""
    dec = s2t.asr_model.decoder
    blocks = 0
    for block in dec.decoders.blocks:
        skip = {id(p) for m in (block.cross_attn.key, block.cross_attn.value) for p in m.parameters()}
        blocks += sum(p.numel() * p.element_size() for p in block.parameters() if id(p) not in skip)
        blocks += sum(b.numel() * b.element_size() for b in block.buffers())
        blocks += sum(_packed_bytes(m) for m in block.modules())
    frames = s2t.asr_model.encoder.n_ctx  # the 30 s window's encoder frames, keys and values in float32
    enc_out = frames * dec.decoders.token_embedding.embedding_dim * 4 * 2 * len(dec.decoders.blocks)
    vocab = dec.vocabulary.numel() * (1 if dec._vocabulary_int8 is not None else 4)
    return {"decoder_blocks": (blocks + enc_out) / 1e6, "vocabulary": vocab / 1e6}


def _packed_bytes(module) -> int:
    """Weight bytes of a dynamic-int8 linear (its weight is packed, not a parameter)."""
    weight = getattr(module, "weight", None)
    if callable(weight) and not isinstance(weight, torch.Tensor):
        return weight().numel()
    return 0


def profile(name: str, exp: str, int8: bool, audio, repeats: int) -> Dict[str, object]:
    variant = espnet_variant(name, exp, int8=int8)
    s2t, clock = variant.engine, StageClock()
    instrument(s2t, clock)
    run_blocks = clock.wrap(kv_cache, "run_blocks", "decoder_blocks")  # module-level: put back below
    try:
        runs, text = [], ""
        for i in range(repeats + 1):
            clock.clear()
            start = time.perf_counter()
            with torch.no_grad():
                text = s2t(audio)[0][0]
            total = time.perf_counter() - start
            if i:  # the first decode warms up
                runs.append((total, exclusive(total, clock.seconds)))
    finally:
        kv_cache.run_blocks = run_blocks
    stages = {s: statistics.median(r[1][s] for r in runs) for s, _ in STAGES}
    return {"name": name, "total": statistics.median(r[0] for r in runs), "stages": stages,
            "steps": clock.calls["batch_score"], "megabytes": step_megabytes(s2t), "text": text}


def table(results: List[Dict[str, object]]) -> str:
    head = "| stage | " + " | ".join(r["name"] for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for stage, what in STAGES:
        cells = []
        for r in results:
            s, ms = r["stages"][stage], 1e3 * r["stages"][stage]
            cell = f"{ms:.0f} ms ({100 * s / r['total']:.0f} %)"
            if stage in r["megabytes"]:
                per_step = ms / r["steps"]
                cell += f"; {per_step:.2f} ms/step, {r['megabytes'][stage]:.0f} MB/step"
            cells.append(cell)
        lines.append(f"| {stage}: {what} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{1e3 * r['total']:.0f} ms**" for r in results) + " |")
    lines.append("| decoding steps | " + " | ".join(str(r["steps"]) for r in results) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", required=True, help="the dense Whisper exp dir")
    p.add_argument("--exps", nargs="*", default=[], help="compressed exp dirs, one column each")
    p.add_argument("--int8", nargs="*", default=[], help="columns (dense or an exp's folder name) also run int8")
    p.add_argument("--data", default=DEFAULT_DATA, help="a Kaldi-style data dir")
    p.add_argument("--utt", default=None, help="the utterance id (default: the data dir's first)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the table, with the command, to this file")
    args = p.parse_args(argv)
    utts = read_data_dir(args.data, require_text=True)
    utt = utts[0] if args.utt is None else next((u for u in utts if u.utt_id == args.utt), None)
    if utt is None:
        raise SystemExit(f"--utt {args.utt}: not in {args.data}")
    torch.set_num_threads(args.threads)
    audio = load_audio(utt.wav_path)
    exps = [("dense", args.dense)] + [(os.path.basename(os.path.normpath(e)), e) for e in args.exps]
    unknown = set(args.int8) - {n for n, _ in exps}
    if unknown:
        raise SystemExit(f"--int8 names columns that are not run: {sorted(unknown)}")
    columns = [(n, e, False) for n, e in exps] + [(f"{n} + int8", e, True) for n, e in exps if n in args.int8]
    results = [profile(n, e, int8, audio, args.repeats) for n, e, int8 in columns]
    command = "python bench/stage_profile.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = "\n".join([
        f"`{command}`", "",
        f"{cpu_model()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {args.threads} thread(s); "
        f"{utt.utt_id} ({len(audio) / 16000:.1f} s), median of {args.repeats} decodes after a warm-up", "",
        table(results), ""])
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report)


if __name__ == "__main__":
    main()
