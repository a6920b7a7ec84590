"""Whisper support: hub-free checkpoint loading (``checkpoints``) and ESPnet
encoder/decoder wrappers (``espnet_whisper``, imported on demand: it needs ESPnet)."""

from espnet_lowrank.whisper.checkpoints import (  # noqa: F401
    CheckpointError,
    build_whisper_model,
    load_whisper_checkpoint,
)
