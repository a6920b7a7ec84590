"""espnet_lowrank: post-training low-rank compression of ESPnet ASR encoders.

Public verbs (imported lazily, so that ``import espnet_lowrank`` stays cheap and never imports ESPnet):

- ``compress(model, calib_data, config)`` -> CompressionResult
- ``calibrate_model(model, calib_data, config)`` -> StatsSet
- ``LowRankConfig``
- ``recover_(compressed, dense, utts, steps)``: short distillation of the factors
  (also run inside ``compress`` by ``recovery.steps``)
- ``register()``: make ESPnet's ASR task know ``encoder: lowrank``
- ``save_compressed(result, train_config, output_dir)`` / ``load_compressed(exp_dir)``
"""

import importlib

_EXPORTS = {
    "compress": "espnet_lowrank.pipeline",
    "calibrate_model": "espnet_lowrank.pipeline",
    "CompressionResult": "espnet_lowrank.pipeline",
    "LowRankConfig": "espnet_lowrank.config",
    "recover_": "espnet_lowrank.recovery",
    "register": "espnet_lowrank.espnet.registry",
    "save_compressed": "espnet_lowrank.api",
    "load_compressed": "espnet_lowrank.api",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'espnet_lowrank' has no attribute {name!r}")
