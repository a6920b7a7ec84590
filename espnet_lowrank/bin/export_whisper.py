"""Export a local Whisper checkpoint as a dense ESPnet ASR exp dir (``config.yaml`` with the
plugin's ``whisper_local`` encoder/decoder, ``model.pth``, greedy ``decode.yaml``):

    python -m espnet_lowrank.bin.export_whisper --model tiny.en --output_dir exp/whisper_tiny_en

Decode it with ``python -m espnet_lowrank.launch -m espnet2.bin.asr_inference``.
"""

import argparse
import logging
from typing import List, Optional

from espnet_lowrank.whisper.export import export_whisper


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a local Whisper checkpoint as a dense ESPnet ASR exp dir",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="tiny.en, base, or a path (CTranslate2 dir, "
                        "openai-whisper .pt, Hugging Face dir with model.safetensors)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--language", default="en", help="for multilingual models")
    parser.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no_check", action="store_true", help="skip rebuilding the model with ESPnet")
    parser.add_argument("--log_level", default="INFO")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    export_whisper(args.model, args.output_dir, language=args.language, task=args.task,
                   overwrite=args.overwrite, check=not args.no_check)


if __name__ == "__main__":
    main()
