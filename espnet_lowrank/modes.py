"""Train/eval modes saved per submodule and restored exactly: ``model.train(was_training)`` sets every
submodule to one flag, which loses mixed modes (a frozen frontend in eval inside a training model)."""

from contextlib import contextmanager
from typing import Dict, Iterator

from torch import nn


def training_modes(module: nn.Module) -> Dict[str, bool]:
    """Submodule name -> its ``training`` flag ("" is ``module`` itself)."""
    return {name: m.training for name, m in module.named_modules()}


def restore_modes(module: nn.Module, modes: Dict[str, bool]) -> None:
    """Set back the flags recorded by ``training_modes``; submodules added since keep their mode."""
    for name, m in module.named_modules():
        if name in modes:
            m.training = modes[name]


@contextmanager
def kept_modes(module: nn.Module) -> Iterator[nn.Module]:
    """``with kept_modes(model): model.eval(); ...`` restores every submodule's mode on exit."""
    modes = training_modes(module)
    try:
        yield module
    finally:
        restore_modes(module, modes)
