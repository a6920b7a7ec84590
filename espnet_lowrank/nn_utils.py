"""Helpers on module trees and padded batches that every layer may use; they
import nothing from the package."""

import torch
from torch import nn


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` under ``root`` (so the state-dict keys follow the name)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def valid_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames) True where a frame lies inside its row's length."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]
