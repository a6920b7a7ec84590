#!/usr/bin/env python3
"""Sentences from VCTK's own text corpus for synthesized calibration speech,
none of them a transcript of the real VCTK evaluation set, so that Piper
speech of VCTK's sentences can join the calibration pool without its words
reaching the held-out utterances (bench/RESULTS.md, "Piper speech of VCTK's
sentences").

    python bench/vctk_sentences.py --num 64 --out exp/piper_vctk/sentences.txt
    python -m espnet_lowrank.bin.synthesize --texts exp/piper_vctk/sentences.txt \\
        --output_dir exp/piper_vctk/data --prefix piper_vctk

Draws ``--num`` distinct sentences with ``--seed`` from
``text_corpora/vctk_vits_filelists.txt`` (``path|speaker|text``), skipping any
whose normalized words equal a transcript in ``--data``'s ``vctk`` set or any
other set named by ``--exclude``.
"""

import argparse
import os
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def words(text: str) -> str:
    return " ".join(re.sub(r"[^A-Z' ]", " ", text.upper()).split())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--exclude", nargs="*", default=["vctk"], help="sets whose transcripts are never drawn")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    corpus = os.path.join(args.data, "text_corpora", "vctk_vits_filelists.txt")
    if not os.path.isfile(corpus):
        raise SystemExit(f"VCTK text corpus not found: {corpus}")
    held_out = set()
    for name in args.exclude:
        with open(os.path.join(args.data, name, "text"), encoding="utf-8") as f:
            held_out.update(words(line.split(maxsplit=1)[1]) for line in f if " " in line.strip())
    with open(corpus, encoding="utf-8") as f:
        texts = sorted({line.rstrip("\n").split("|")[-1].strip().strip('"') for line in f if "|" in line})
    texts = [t for t in texts if words(t) and words(t) not in held_out]
    if args.num > len(texts):
        raise SystemExit(f"--num {args.num} asks for more than the {len(texts)} usable sentences")
    chosen = random.Random(args.seed).sample(texts, args.num)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in chosen)
    os.replace(tmp, args.out)
    print(f"{args.num} sentences ({len(held_out)} held-out transcripts excluded) -> {args.out}")


if __name__ == "__main__":
    main()
