#!/usr/bin/env python3
"""Decode one data dir with several (beam, ctc_weight, lm_weight) settings through ESPnet's
Speech2Text and score each: the dev-side search for the decode config (README.md).

    python local/tune_decode.py --asr_exp exp/asr_x --asr_model exp/asr_x/valid.acc.best.pth \\
        --lm_exp exp/lm_y --data dump/sd/raw/dev --rows 4,0.3,0 4,0.3,0.3 1,0.3,0.3 \\
        --out exp/asr_x/tune_dev

Rows already in OUT/results.jsonl are not decoded again; OUT/results.md is the table of all rows.
ctc_weight 1.0 is the decoder off (CTC prefix search only); lm_weight 0 is the LM off.
"""

import argparse
import json
import os
import sys
import time

from espnet_lowrank.data import read_data_dir
from espnet_lowrank.eval.decode import transcribe
from espnet_lowrank.scoring import score_texts
from espnet_lowrank.utils import atomic_write_text


def parse_row(text: str):
    try:
        beam, ctc, lm = text.split(",")
        return int(beam), float(ctc), float(lm)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a row is BEAM,CTC_WEIGHT,LM_WEIGHT, got {text!r}")


def decode_row(args, utts, beam: int, ctc: float, lm: float) -> dict:
    from espnet2.bin.asr_inference import Speech2Text

    use_lm = lm > 0
    s2t = Speech2Text(
        asr_train_config=os.path.join(args.asr_exp, "config.yaml"), asr_model_file=args.asr_model,
        lm_train_config=os.path.join(args.lm_exp, "config.yaml") if use_lm else None,
        lm_file=args.lm_model if use_lm else None,
        beam_size=beam, ctc_weight=ctc, lm_weight=lm, penalty=0.0, nbest=1, device="cpu")
    start = time.perf_counter()
    hyps = transcribe(s2t, utts)
    seconds = time.perf_counter() - start
    refs = {u.utt_id: u.text for u in utts}
    row = score_texts(refs, hyps, dataset=os.path.basename(args.data), normalize="basic")
    return {"beam": beam, "ctc_weight": ctc, "lm_weight": lm, "wer": row.err, "sub": row.sub,
            "del": row.dele, "ins": row.ins, "words": row.wrd, "utts": row.snt, "seconds": seconds,
            "asr_model": args.asr_model, "lm_model": args.lm_model if use_lm else None}


def table(rows) -> str:
    lines = ["| beam | ctc_weight | lm_weight | WER | S / D / I | seconds |", "|---:|---:|---:|---:|---|---:|"]
    for r in sorted(rows, key=lambda r: (r["wer"], r["seconds"])):
        lines.append(f"| {r['beam']} | {r['ctc_weight']} | {r['lm_weight']} | {r['wer']:.1f} | "
                     f"{r['sub']:.1f} / {r['del']:.1f} / {r['ins']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_exp", required=True)
    p.add_argument("--asr_model", help="default: ASR_EXP/valid.acc.best.pth")
    p.add_argument("--lm_exp", required=True)
    p.add_argument("--lm_model", help="default: LM_EXP/valid.loss.best.pth")
    p.add_argument("--data", required=True, help="Kaldi dir to decode")
    p.add_argument("--rows", nargs="+", type=parse_row, required=True, help="BEAM,CTC_WEIGHT,LM_WEIGHT")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.asr_model = args.asr_model or os.path.join(args.asr_exp, "valid.acc.best.pth")
    args.lm_model = args.lm_model or os.path.join(args.lm_exp, "valid.loss.best.pth")
    for path in (os.path.join(args.asr_exp, "config.yaml"), args.asr_model):
        if not os.path.isfile(path):
            sys.exit(f"ERROR: not found: {path}")
    if any(lm > 0 for _, _, lm in args.rows) and not os.path.isfile(args.lm_model):
        sys.exit(f"ERROR: a row has lm_weight > 0 and the LM is not found: {args.lm_model}")
    utts = read_data_dir(args.data)
    os.makedirs(args.out, exist_ok=True)
    ledger = os.path.join(args.out, "results.jsonl")
    done = [json.loads(line) for line in open(ledger)] if os.path.isfile(ledger) else []
    for beam, ctc, lm in args.rows:
        key = (beam, ctc, lm, args.asr_model)
        if any((r["beam"], r["ctc_weight"], r["lm_weight"], r["asr_model"]) == key for r in done):
            continue
        row = decode_row(args, utts, beam, ctc, lm)
        print(f"beam {beam} ctc {ctc} lm {lm}: WER {row['wer']:.1f} ({row['seconds']:.0f} s)", flush=True)
        done.append(row)
        atomic_write_text(ledger, "".join(json.dumps(r) + "\n" for r in done))
        atomic_write_text(os.path.join(args.out, "results.md"), table(done))


if __name__ == "__main__":
    main()
