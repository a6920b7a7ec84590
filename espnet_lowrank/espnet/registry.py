"""Make ESPnet's ASR task know this plugin's classes (``ClassChoices`` entries), idempotently, without
modifying ESPnet; classes are named by import path so that nothing heavy is imported before ESPnet asks."""

import importlib
import logging

logger = logging.getLogger(__name__)

# choices-object name in espnet2.tasks.asr -> {yaml name: "module:Class"}
PLUGIN_CLASSES = {
    "encoder_choices": {
        "lowrank": "espnet_lowrank.espnet.encoder:LowRankEncoder",
        "whisper_local": "espnet_lowrank.whisper.espnet_whisper:LocalWhisperEncoder",
    },
    "decoder_choices": {
        "whisper_local": "espnet_lowrank.whisper.espnet_whisper:LocalWhisperDecoder",
    },
}


def register_into(asr_task_module) -> None:
    """Add the plugin's classes to an already imported ``espnet2.tasks.asr``."""
    for choices_name, entries in PLUGIN_CLASSES.items():
        choices = getattr(asr_task_module, choices_name)
        for name, path in entries.items():
            if name not in choices.classes:
                module_name, class_name = path.split(":")
                choices.classes[name] = getattr(importlib.import_module(module_name), class_name)
    logger.debug("espnet_lowrank classes registered with espnet2.tasks.asr")


def register() -> None:
    """Register the plugin with ESPnet's ASR task (imports ESPnet)."""
    register_into(importlib.import_module("espnet2.tasks.asr"))
