#!/usr/bin/env python
"""End-to-end ``Speech2Text`` decode time of a Whisper exp dir with the
incremental decoder (self-attention cache, last position projected) against
the full-prefix recompute it replaced (``LocalWhisperDecoder.batch_score_recompute``).

    python bench/decode_speed.py --exp EXP_DIR [--beam 1] [--num_utts 8] [--threads 1]

Both paths decode the same utterances with the same model, alternating
(which goes first alternates too), after one warm-up decode; the table shows
each utterance's median seconds and the ratio old / new, end to end and
without the encoder (its median time, measured alone, taken off both), and the
run fails if any hypothesis differs.
"""

import argparse
import os
import platform
import statistics
import time
from typing import Dict, List, Optional

import torch

from espnet_lowrank.audio import load_audio
from espnet_lowrank.data import read_data_dir
from espnet_lowrank.espnet.registry import register
from espnet_lowrank.eval.decode import load_speech2text

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                            "data", "librispeech_train-clean-100")


def build_speech2text(exp: str, beam: int):
    register()
    return load_speech2text(exp, batch_size=1, beam_size=beam, nbest=1)


def decode_once(s2t, audio, recompute: bool):
    dec = s2t.asr_model.decoder
    if recompute:
        dec.batch_score = dec.batch_score_recompute  # the instance attribute shadows the method
    try:
        start = time.perf_counter()
        tokens = s2t(audio)[0][2]
        return time.perf_counter() - start, tokens
    finally:
        dec.__dict__.pop("batch_score", None)


def encode_seconds(s2t, audio) -> float:
    speech = torch.from_numpy(audio)[None]
    start = time.perf_counter()
    s2t.asr_model.encode(speech, torch.tensor([speech.size(1)]))
    return time.perf_counter() - start


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="a Whisper exp dir (config.yaml, model.pth, decode.yaml)")
    p.add_argument("--data", default=DEFAULT_DATA, help="a Kaldi-style data dir")
    p.add_argument("--num_utts", type=int, default=8)
    p.add_argument("--beam", type=int, default=1, help="beam size (decode.yaml's is 1)")
    p.add_argument("--rounds", type=int, default=3, help="decodes of each utterance per path")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    torch.set_num_threads(args.threads)
    utts = read_data_dir(args.data)[: args.num_utts]
    audio = {u.utt_id: load_audio(u.wav_path) for u in utts}
    s2t = build_speech2text(args.exp, args.beam)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), beam {args.beam}, {len(utts)} utterances, {args.rounds} rounds")
    with torch.no_grad():
        decode_once(s2t, audio[utts[0].utt_id], recompute=False)  # warm-up
        times: Dict[str, Dict[object, List[float]]] = {u: {False: [], True: [], "enc": []} for u in audio}
        hyps: Dict[str, Dict[bool, list]] = {u: {} for u in audio}
        for r in range(args.rounds):
            for i, (utt, wav) in enumerate(audio.items()):
                times[utt]["enc"].append(encode_seconds(s2t, wav))
                for recompute in ((False, True) if (r + i) % 2 else (True, False)):
                    seconds, tokens = decode_once(s2t, wav, recompute)
                    times[utt][recompute].append(seconds)
                    hyps[utt].setdefault(recompute, tokens)
                    if tokens != hyps[utt][recompute]:
                        raise SystemExit(f"{utt}: the {'old' if recompute else 'new'} path is not deterministic")
    print(f"{'utt':<24} {'s':>5} {'tokens':>6} {'enc s':>6} {'old s':>7} {'new s':>7} {'old/new':>7} "
          f"{'w/o enc':>7}")
    total = {False: 0.0, True: 0.0, "enc": 0.0}
    for u in utts:
        med = {k: statistics.median(v) for k, v in times[u.utt_id].items()}
        for k in total:
            total[k] += med[k]
        print(f"{u.utt_id:<24} {len(audio[u.utt_id]) / 16000:5.1f} {len(hyps[u.utt_id][False]):6d} "
              f"{med['enc']:6.2f} {med[True]:7.3f} {med[False]:7.3f} {med[True] / med[False]:7.2f} "
              f"{(med[True] - med['enc']) / (med[False] - med['enc']):7.2f}")
    print(f"{'total':<24} {'':5} {'':6} {total['enc']:6.2f} {total[True]:7.3f} {total[False]:7.3f} "
          f"{total[True] / total[False]:7.2f} {(total[True] - total['enc']) / (total[False] - total['enc']):7.2f}")
    same = sum(hyps[u][False] == hyps[u][True] for u in hyps)
    print(f"identical hypotheses: {same}/{len(hyps)}")
    if same != len(hyps):
        raise SystemExit("the incremental decoder changed a hypothesis")


if __name__ == "__main__":
    main()
