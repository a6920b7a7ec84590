"""The shipped method configs, ``lowrank/<family>.yaml``, as package data (``conf/lowrank`` links here)."""

import importlib.resources
from pathlib import Path
from typing import List


def _lowrank_dir() -> Path:
    # a wheel or an editable install: the package is a plain directory
    return Path(str(importlib.resources.files(__name__) / "lowrank"))


def shipped_configs() -> List[str]:
    """Stems of the shipped YAMLs (family defaults and named variants)."""
    return sorted(p.stem for p in _lowrank_dir().glob("*.yaml"))


def default_config_path(family_name: str) -> Path:
    """The default method YAML of an encoder family (``lowrank/<family>.yaml``)."""
    path = _lowrank_dir() / f"{family_name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no default low-rank config for family {family_name!r} (shipped: "
                                f"{', '.join(shipped_configs())}); pass --lowrank_config")
    return path
