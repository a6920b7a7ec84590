"""Whisper support, hub-free.

- ``checkpoints``: load local weights (dispatch, packaged models), with the
  format readers ``ct2`` (CTranslate2) and ``hf`` (Hugging Face);
- ``espnet_whisper``: ESPnet encoder/decoder wrappers (imported on demand: it needs ESPnet);
- ``tokenizer``: the tokenizer helpers and the explicit ESPnet compat patch;
- ``export``: a dense ESPnet exp dir from a checkpoint.
"""

from espnet_lowrank.whisper.checkpoints import (  # noqa: F401
    CheckpointError,
    build_whisper_model,
    load_whisper_checkpoint,
)
