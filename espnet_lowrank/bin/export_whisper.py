"""Export a local Whisper checkpoint as a dense ESPnet ASR experiment directory.

    python -m espnet_lowrank.bin.export_whisper --model tiny.en --output_dir exp/whisper_tiny_en

writes ``config.yaml`` (an ESPnet ASR train config using the plugin's
``whisper_local`` encoder/decoder, token list inlined), ``model.pth`` (the
ESPnet model state dict) and ``decode.yaml`` (greedy decoding for
``espnet2.bin.asr_inference --config``). Decode with

    python -m espnet_lowrank.launch -m espnet2.bin.asr_inference \\
        --asr_train_config DIR/config.yaml --asr_model_file DIR/model.pth \\
        --config DIR/decode.yaml ...

The logic lives in :mod:`espnet_lowrank.whisper.export`; this CLI only parses
arguments (also installed as ``espnet-lowrank-export-whisper``).
"""

import argparse
import logging
import sys
from typing import List, Optional

from espnet_lowrank.whisper.export import export_whisper


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a local Whisper checkpoint as a dense ESPnet ASR exp dir",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="tiny.en, base, or a path (CTranslate2 dir, openai-whisper .pt, "
        "Hugging Face dir with model.safetensors)",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--language", default="en", help="for multilingual models")
    parser.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--no_check", action="store_true", help="skip rebuilding the model with ESPnet"
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )
    export_whisper(
        args.model,
        args.output_dir,
        language=args.language,
        task=args.task,
        overwrite=args.overwrite,
        check=not args.no_check,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
