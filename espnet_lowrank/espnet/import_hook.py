"""An opt-in import hook (a ``.pth`` line, ``espnet_lowrank.bin.install_hook``): once ``espnet2.tasks.asr``
is imported, the plugin registers itself, so plain ESPnet understands ``encoder: lowrank``. It imports
nothing from ESPnet itself."""

import importlib.abc
import sys

from espnet_lowrank.espnet.registry import register_into

WATCHED = "espnet2.tasks.asr"


class _RegisterAfterExec(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_into(module)


class EspnetAsrWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the watcher on ``sys.meta_path`` (once)."""
    if WATCHED in sys.modules:
        register_into(sys.modules[WATCHED])
        return
    if not any(isinstance(f, EspnetAsrWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, EspnetAsrWatcher())
