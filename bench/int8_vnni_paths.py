#!/usr/bin/env python
"""What dynamic int8 costs on each kind of CPU: fbgemm's 8-bit activations
(``quantize.FULL_RANGE``, used on VNNI CPUs) against the 7-bit
``reduce_range`` path that CPUs without VNNI get. Both paths run on a VNNI
CPU (only the 8-bit one is wrong without VNNI: its kernels saturate), so one
machine measures both.

    python bench/int8_vnni_paths.py --wer 30 --wer_dense_only > bench/results/int8_vnni_paths.txt

Rows: Whisper tiny.en dense and in LiteASR mode (θ 0.98 / 0.995, the
factored model of tests/test_int8.py), float and int8 on each path.
Encoder output error ‖int8 − float‖ / ‖float‖ on (a) the two held-out
utterances and the 4-utterance statistics of tests/test_int8.py, (b) the
mean over ``--eval`` held-out LibriSpeech utterances, one at a time. With
``--wer N``: greedy WER through ``Speech2Text`` on N held-out LibriSpeech and
N VCTK utterances (not in the calibration set); ``--wer_dense_only``: of
dense tiny.en only (the LiteASR-mode model here is calibrated on 4
utterances, for the test's bounds, not for its WER).
"""

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch

import espnet_lowrank.quantize as quantize
from espnet_lowrank.audio import load_audio
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.decode import load_speech2text, transcribe, with_model
from espnet_lowrank.eval.pool import CALIB_SET, dense_exp_dir
from espnet_lowrank.pipeline import calibrate_model, compress
from espnet_lowrank.scoring import score_texts

REPO = Path(__file__).resolve().parents[1]

FACTORED = dict(theta_attention=0.98, theta_feed_forward=0.995)
PATHS = {"8-bit (VNNI)": True, "7-bit reduce_range (no VNNI)": False}


def quantized(model, full_range: bool):
    q = copy.deepcopy(model)
    kept = quantize.FULL_RANGE
    quantize.FULL_RANGE = full_range
    try:
        quantize.quantize_linears_(q.encoder)
    finally:
        quantize.FULL_RANGE = kept
    return q.eval()


def batch(utts):
    wavs = [torch.from_numpy(load_audio(u.wav_path)) for u in utts]
    speech = torch.zeros(len(wavs), max(w.numel() for w in wavs))
    for i, w in enumerate(wavs):
        speech[i, : w.numel()] = w
    return speech, torch.tensor([w.numel() for w in wavs])


@torch.no_grad()
def rel_error(q, model, speech) -> float:
    a, b = q.encode(*speech)[0], model.encode(*speech)[0]
    return ((a - b).norm() / b.norm()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--work_dir", default="exp/bench_int8_paths", help="where the dense export is kept")
    p.add_argument("--eval", type=int, default=16, help="held-out LibriSpeech utterances for the mean error")
    p.add_argument("--wer", type=int, default=0, help="held-out utterances per set (LibriSpeech, VCTK) to decode")
    p.add_argument("--wer_dense_only", action="store_true", help="decode dense tiny.en only (a third of the time)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    print(f"# python bench/int8_vnni_paths.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# {cpu}; VNNI: {quantize._has_vnni()} (the path this CPU runs: FULL_RANGE={quantize.FULL_RANGE}); "
          f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}")
    exp = dense_exp_dir("tiny.en", args.work_dir)
    dense_s2t = load_speech2text(exp)
    dense = dense_s2t.asr_model.eval()
    librispeech = read_data_dir(os.path.join(args.data, CALIB_SET), require_text=True)
    # tests/test_int8.py: statistics on the first 4, error on the next 2
    stats = calibrate_model(dense, librispeech[:4], LowRankConfig())
    lowrank = compress(dense, config=LowRankConfig(**FACTORED), stats=stats).model.eval()
    test_speech = batch(librispeech[4:6])
    held = librispeech[6: 6 + args.eval]
    models = {"dense": dense, "LiteASR θ (0.98, 0.995)": lowrank}

    print("\n## encoder output: ‖int8 − float‖ / ‖float‖\n")
    print(f"| model | int8 path | test_int8's 2 utterances | mean over {len(held)} held-out utterances |")
    print("|---|---|---|---|")
    variants = {}
    for name, model in models.items():
        for path, full in PATHS.items():
            q = quantized(model, full)
            variants[(name, path)] = q
            test_err = rel_error(q, model, test_speech)
            mean_err = sum(rel_error(q, model, batch([u])) for u in held) / len(held)
            print(f"| {name} | {path} | {test_err:.4f} | {mean_err:.4f} |", flush=True)

    if args.wer:
        sets = {"librispeech": librispeech[6 + args.eval: 6 + args.eval + args.wer],
                "vctk": read_data_dir(os.path.join(args.data, "vctk"), require_text=True)[: args.wer]}
        print(f"\n## greedy WER (%), {args.wer} held-out utterances per set\n")
        print("| model | int8 | " + " | ".join(sets) + " |")
        print("|---|---|" + "---|" * len(sets))
        for name, model in list(models.items())[: 1 if args.wer_dense_only else None]:
            for path, q in [("float", model)] + [(p, variants[(name, p)]) for p in PATHS]:
                s2t = with_model(dense_s2t, q)
                cells = []
                for utts in sets.values():
                    hyps = transcribe(s2t, utts)
                    refs = {u.utt_id: u.text for u in utts}
                    cells.append(f"{score_texts(refs, hyps, normalize='whisper').err:.2f}")
                print(f"| {name} | {path} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n# {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
