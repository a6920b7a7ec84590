"""What the Whisper checkpoint readers share: the error type and ModelDimensions."""

from typing import Dict

import torch

StateDict = Dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A Whisper checkpoint could not be found or understood."""


def dims_from_dict(d: Dict[str, int]):
    from whisper.model import ModelDimensions

    return ModelDimensions(**{k: int(v) for k, v in d.items()})
