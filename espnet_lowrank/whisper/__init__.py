"""Whisper support, hub-free: local weights (``checkpoints``, readers ``ct2``/``hf``), ESPnet wrappers
(``espnet_whisper``, imported on demand: it needs ESPnet), ``tokenizer`` helpers and ESPnet compat, and
``export`` of a dense ESPnet exp dir."""

from espnet_lowrank.whisper.checkpoints import (  # noqa: F401
    CheckpointError,
    build_whisper_model,
    load_whisper_checkpoint,
)
