#!/usr/bin/env python
"""End-to-end transcription time and WER of exp dirs against their dense
model (Whisper: and faster-whisper on the same weights), at 1 and 2 threads
and, with ``--beams``, at several beam sizes (an ESPnet Conformer).

    python bench/e2e_speed.py --dense exp/whisper_tiny.en --exps exp/whisper_tiny_best \\
        --int8 dense whisper_tiny_best --sets ../shared/data/vctk ../shared/data/pocketsphinx \\
        --long_form ../shared/data/librispeech_train-clean-100:200-251 --threads 1 2 \\
        --out_dir bench/results/e2e_tiny.en

A set is a Kaldi dir with ``text``, ``DIR:N`` its first N utterances and
``DIR:A-B`` utterances A to B-1 (sorted by id); ``--long_form`` sets are
packed into 30 s windows. Rows alternate over ``--rounds`` in one process
(``espnet_lowrank.eval.e2e``). Writes ``e2e.md`` (one table per thread count,
the command and the machine on top) and ``e2e.json``.
"""

import argparse
import json
import os
import sys
import time

import torch

from espnet_lowrank.eval.e2e import espnet_variant, faster_whisper_variant, items_from, markdown, rows_of, run_rounds
from espnet_lowrank.measure import cpu_model
from espnet_lowrank.progress import progress
from espnet_lowrank.whisper.checkpoints import packaged_model_dir


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", required=True, help="the dense exp dir (the 'dense' row)")
    p.add_argument("--exps", nargs="*", default=[], help="compressed exp dirs, one row each, named by folder")
    p.add_argument("--int8", nargs="*", default=[], help="rows (dense or an exp's folder name) also run with int8")
    p.add_argument("--faster_whisper", default="tiny.en",
                   help="a CTranslate2 model dir, or a packaged Whisper name; 'none' drops the peer rows")
    p.add_argument("--sets", nargs="*", default=[], help="short-utterance sets: DIR, DIR:N or DIR:A-B")
    p.add_argument("--long_form", nargs="*", default=[], help="sets packed into 30 s windows")
    p.add_argument("--beams", nargs="*", type=int, default=[],
                   help="beam sizes for the exp dirs' rows (default: each decode.yaml's); ratios are to the "
                        "first row, the dense model at the first beam")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out_dir", required=True)
    return p


def _items(spec: str, long_form: bool):
    path, _, part = spec.partition(":")
    first, _, last = part.partition("-")
    if part and (not first.isdigit() or (last and not last.isdigit())):
        raise SystemExit(f"{spec}: expected DIR, DIR:N or DIR:A-B")
    start, stop = (0, None) if not part else (0, int(first)) if not last else (int(first), int(last))
    return items_from(path, start, stop, long_form=long_form, name=os.path.basename(os.path.normpath(path)))


def main(argv=None):
    args = get_parser().parse_args(argv)
    names = [os.path.basename(os.path.normpath(e)) for e in args.exps]
    unknown = set(args.int8) - {"dense"} - set(names)
    if unknown:
        raise SystemExit(f"--int8 names rows that are not run: {sorted(unknown)}")
    items = [i for s in args.sets for i in _items(s, False)] + [i for s in args.long_form for i in _items(s, True)]
    if not items:
        raise SystemExit("give --sets or --long_form")
    peer = None
    if args.faster_whisper != "none":
        peer = args.faster_whisper if os.path.isdir(args.faster_whisper) else packaged_model_dir(args.faster_whisper)
    os.makedirs(args.out_dir, exist_ok=True)
    command = "python bench/e2e_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = [f"`{command}`\n", f"{cpu_model()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
              f"{len(items)} items, {sum(i.seconds for i in items) / 60:.1f} min of audio, "
              f"{args.rounds} round(s)\n"]
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        variants = []
        for beam in args.beams or [None]:
            tag = "" if beam is None else f", beam {beam}"
            variants += [espnet_variant(f"dense{tag}", args.dense, beam_size=beam)]
            variants += [espnet_variant(f"{n}{tag}", e, beam_size=beam) for n, e in zip(names, args.exps)]
            variants += [espnet_variant(f"{n} + int8{tag}", e, int8=True, beam_size=beam)
                         for n, e in [("dense", args.dense)] + list(zip(names, args.exps)) if n in args.int8]
        if peer:
            variants += [faster_whisper_variant(f"faster-whisper {t}", peer, t, threads)
                         for t in ("float32", "int8")]
        run_rounds(variants, items, args.rounds, progress=progress)
        rows = rows_of(variants, items, args.rounds, dense=variants[0].name)
        table = markdown(rows)
        print(f"\n{threads} thread(s)\n{table}", flush=True)
        report.append(f"\n## {threads} thread(s)\n\n{table}")
        results[threads] = [{"name": r.name, "seconds": r.seconds, "rtf": r.rtf, "vs_dense": r.vs_dense,
                             "encoder_share": r.encoder_share,
                             "wer": {s: vars(x) for s, x in r.scores.items()}} for r in rows]
    with open(os.path.join(args.out_dir, "e2e.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(report))
    with open(os.path.join(args.out_dir, "e2e.json"), "w", encoding="utf-8") as f:
        json.dump({"command": command, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
