"""Encoder families, keyed by the dense encoder's class (through the MRO: a low-rank subclass maps to its
base). A new family is one adapter, ``families/<name>.py`` with a module-level ``FAMILY``
(``base.EncoderFamily``), plus ``conf/lowrank/<name>.yaml``; new module types go into ``handlers.py``."""

import importlib
import pkgutil
from typing import Dict

from torch import nn

from espnet_lowrank.families.base import EncoderFamily


def all_families() -> Dict[str, EncoderFamily]:
    """encoder class path -> family, for every module here with a ``FAMILY``."""
    families = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if family is not None:
            families[family.encoder_class] = family
    return families


def family_for(encoder: nn.Module) -> EncoderFamily:
    families = all_families()
    for cls in type(encoder).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in families:
            return families[key]
    raise TypeError(f"no low-rank adapter for encoder {type(encoder).__name__}; supported: "
                    + ", ".join(sorted(families)))
