"""Score ASR hypotheses against references and print an ESPnet-style table.

    python -m espnet_lowrank.bin.score --ref data/test/text \\
        --hyp exp/asr/decode/test/1best_recog/text --dataset test --normalize whisper
"""

import argparse
import logging
import os
from typing import Optional, Sequence

from espnet_lowrank.scoring import NORMALIZERS, markdown_table, read_text_file, score_texts
from espnet_lowrank.utils import atomic_write_text


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", required=True, help="Kaldi text file with references")
    p.add_argument("--hyp", required=True, help="Kaldi text file with hypotheses")
    p.add_argument("--dataset", default=None, help="dataset column (default: hyp's decode dir)")
    p.add_argument("--normalize", choices=NORMALIZERS, default="whisper")
    p.add_argument("--cer", action="store_true", help="also print a character error table")
    p.add_argument("--out_md", default=None, help="also write the table(s) to this file")
    return p


def _default_dataset(hyp: str) -> str:
    d = os.path.dirname(os.path.abspath(hyp))
    if os.path.basename(d) == "1best_recog":
        d = os.path.dirname(d)
    return os.path.basename(d) or "test"


def main(cmd: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(cmd)
    refs, hyps = read_text_file(args.ref), read_text_file(args.hyp)
    dataset = args.dataset or _default_dataset(args.hyp)
    out = "## WER\n\n" + markdown_table([score_texts(refs, hyps, dataset, args.normalize)])
    if args.cer:
        cer = score_texts(refs, hyps, dataset, args.normalize, unit="char")
        out += "\n## CER\n\n" + markdown_table([cer])
    print(out, end="")
    if args.out_md:
        atomic_write_text(args.out_md, out)


if __name__ == "__main__":
    main()
