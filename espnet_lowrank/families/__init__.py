"""Encoder families, keyed by the dense encoder's class (found through the MRO,
so a low-rank subclass maps to its base). Adding a family is one module here
plus one entry in ``_FAMILY_MODULES``.
"""

import importlib
from typing import Dict

from torch import nn

from espnet_lowrank.families.base import EncoderFamily

_FAMILY_MODULES = (
    "espnet_lowrank.families.whisper",
    "espnet_lowrank.families.conformer",
    "espnet_lowrank.families.transformer",
    "espnet_lowrank.families.e_branchformer",
)


def all_families() -> Dict[str, EncoderFamily]:
    """encoder class path -> family."""
    families = {}
    for module_name in _FAMILY_MODULES:
        family = importlib.import_module(module_name).FAMILY
        families[family.encoder_class] = family
    return families


def family_for(encoder: nn.Module) -> EncoderFamily:
    families = all_families()
    for cls in type(encoder).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in families:
            return families[key]
    raise TypeError(
        f"no low-rank adapter for encoder {type(encoder).__name__}; supported: "
        + ", ".join(sorted(families))
    )

