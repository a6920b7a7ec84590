#!/usr/bin/env python3
"""Scale on paper: statistics per calibration job, and how calibration time and
memory fall with the number of jobs.

    python bench/scale.py                       # sizes only (seconds, no audio)
    python bench/scale.py --measure 16          # + tiny.en with 1, 2, 4 local jobs on 16 utterances

Sizes come from the real target layers (the family adapters' ``target_layers``)
of encoders built on the meta device: each target keeps a float64 d_out x d_out
Gram matrix and a float64 d_out sum, so one job's statistics take
8 * sum(d_out^2 + d_out) bytes, whatever its number of utterances.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

from espnet_lowrank.families import all_families

MB = 2 ** 20


def _whisper_params(dims: dict) -> int:
    """Encoder + decoder weights (Whisper() itself cannot be built on meta: a sparse buffer)."""
    from whisper.model import AudioEncoder, TextDecoder

    with torch.device("meta"):
        parts = (AudioEncoder(dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"],
                              dims["n_audio_head"], dims["n_audio_layer"]),
                 TextDecoder(dims["n_vocab"], dims["n_text_ctx"], dims["n_text_state"],
                             dims["n_text_head"], dims["n_text_layer"]))
    return sum(p.numel() for part in parts for p in part.parameters())


WHISPER = {
    "tiny.en": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                    n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4),
    "large-v3": dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                     n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32),
}


def whisper_row(name: str) -> dict:
    from espnet_lowrank.whisper.espnet_whisper import LocalWhisperEncoder

    dims = WHISPER[name]
    with torch.device("meta"):
        encoder = LocalWhisperEncoder(n_mels=dims["n_mels"], n_state=dims["n_audio_state"],
                                      n_head=dims["n_audio_head"], n_layer=dims["n_audio_layer"])
    targets = family_by_name("whisper").target_layers(encoder)
    return _row(f"Whisper {name}", targets, _whisper_params(dims),
                dims["n_audio_layer"])


def conformer_row(blocks: int = 12, d: int = 512, units: int = 2048) -> dict:
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    encoder = ConformerEncoder(80, output_size=d, attention_heads=8, linear_units=units,
                               num_blocks=blocks, input_layer="conv2d", macaron_style=True,
                               rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                               selfattention_layer_type="rel_selfattn",
                               use_cnn_module=True, cnn_module_kernel=31)
    targets = family_by_name("conformer").target_layers(encoder)
    # A 6-block d=512 Transformer decoder over 5000 BPE units would add about 20 M weights.
    return _row(f"Conformer {blocks}x{d} (ff {units}; encoder only)", targets,
                sum(p.numel() for p in encoder.parameters()), blocks)


def family_by_name(name: str):
    """The family adapter called ``name`` (whisper, conformer, ...)."""
    return next(f for f in all_families().values() if f.name == name)


def _row(name: str, targets: dict, params: int, blocks: int) -> dict:
    gram = sum(d_out * d_out + d_out for _, _, d_out in targets.values())
    # Per frame: the target linears' multiply-adds, and the float64 Gram update.
    macs = sum(d_in * d_out for _, d_in, d_out in targets.values())
    return {"model": name, "blocks": blocks, "targets": len(targets), "stats_mb": 8 * gram / MB,
            "weights_mb": 4 * params / MB, "macs_per_frame": macs, "gram_per_frame": gram}


def sizes() -> list:
    rows = [whisper_row("tiny.en"), whisper_row("large-v3"), conformer_row()]
    print("| model | blocks | target layers | statistics per job (MB, float64) | fp32 weights (MB) "
          "| linear MACs / frame | Gram updates / frame |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['blocks']} | {r['targets']} | {r['stats_mb']:.1f} | {r['weights_mb']:.0f} "
              f"| {r['macs_per_frame'] / 1e6:.1f} M | {r['gram_per_frame'] / 1e6:.1f} M |")
    return rows


def measure(num: int, njs, rows: list) -> None:
    """Split calibration of tiny.en on ``num`` LibriSpeech utterances with each nj, local backend."""
    from espnet_lowrank.bin.export_whisper import export_whisper
    from espnet_lowrank.calibration import StatsSet
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.data import read_data_dir, write_data_dir
    from espnet_lowrank.jobs import split_calibration

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = os.environ.get("ESPNET_LOWRANK_SHARED_DATA", os.path.join(os.path.dirname(root), "shared", "data"))
    conf = os.path.join(root, "conf", "lowrank", "whisper.yaml")
    config = LowRankConfig.from_yaml(conf).replace(num_calib=num)
    work = tempfile.mkdtemp(prefix="scale-")
    export_whisper("tiny.en", os.path.join(work, "dense"))
    write_data_dir(os.path.join(work, "calib"),
                   read_data_dir(os.path.join(shared, "librispeech_train-clean-100"))[:num])
    args = ["--asr_train_config", os.path.join(work, "dense", "config.yaml"),
            "--asr_model_file", os.path.join(work, "dense", "model.pth"), "--lowrank_config", conf]
    print(f"\ntiny.en, {num} utterances, batch {config.calibration.batch_size}, local backend, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print("| jobs | wall s (calibration, jobs included) | job-seconds in the calibration loop (sum) "
          "| peak RSS per job (MB) | statistics file per job (MB) |")
    print("|---:|---:|---:|---:|---:|")
    results = {}
    for nj in njs:
        start = time.perf_counter()
        paths = split_calibration(args, os.path.join(work, "calib"), config, nj,
                                  os.path.join(work, f"nj{nj}"))
        wall = time.perf_counter() - start
        parts = [StatsSet.load(p) for p in paths]
        loop = sum(p.seconds for p in parts)
        rss = max(p.peak_rss_mb for p in parts)
        size = max(os.path.getsize(p) for p in paths) / MB
        results[nj] = (wall, loop, rss)
        print(f"| {len(paths)} | {wall:.1f} | {loop:.1f} | {rss:.0f} | {size:.1f} |")

    wall1, loop1, rss1 = results[njs[0]]
    per_utt = loop1 / num
    fixed = wall1 - loop1  # one job's start: imports, model load, statistics write
    tiny, large = rows[0], rows[1]
    base = rss1 - tiny["weights_mb"] - tiny["stats_mb"]
    ratio = (large["macs_per_frame"] + large["gram_per_frame"]) / (tiny["macs_per_frame"] + tiny["gram_per_frame"])
    print(f"\none job: {fixed:.1f} s to start, {per_utt:.2f} s per utterance; "
          f"peak RSS = {base:.0f} MB (Python, torch, ESPnet) + weights + statistics")
    print("extrapolated, on free cores: wall(nj) = start + utterances x s/utt / nj")
    for r in rows:
        scale = (r["macs_per_frame"] + r["gram_per_frame"]) / (tiny["macs_per_frame"] + tiny["gram_per_frame"])
        if r["model"].startswith("Conformer"):
            continue  # its frames per utterance depend on the audio's length, not a fixed 30 s window
        s_utt = per_utt * scale
        hours = {nj: 10000 * s_utt / nj / 3600 for nj in (1, 4, 16, 64)}
        print(f"- {r['model']}: ~{s_utt:.1f} s/utt (x{scale:.0f} of tiny.en per frame); 10,000 utterances: "
              + ", ".join(f"{nj} jobs {h:.1f} h" for nj, h in hours.items())
              + f"; peak RSS per job ~{(base + r['weights_mb'] + r['stats_mb']) / 1024:.1f} GB")
    print(f"(large-v3 / tiny.en work per frame: x{ratio:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", type=int, metavar="N", help="also time tiny.en on N utterances")
    parser.add_argument("--nj", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    os.environ.setdefault("ESPNET_LOWRANK_NO_TQDM", "1")
    print(f"$ python bench/scale.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}\n")
    rows = sizes()
    if args.measure:
        measure(args.measure, args.nj, rows)


if __name__ == "__main__":
    main()
