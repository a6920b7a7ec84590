"""Pieces shared by the ESPnet encoder adapters (Conformer, Transformer,
E-Branchformer): the valid-frame mask taken from ``embed`` and the encoder
frame count of a window. Their attention types are in the handler registry.

For the relative-position attentions, ``choose_attention_``'s "auto" mode
compares FLOPs of q/k/v/out only: the position term (linear_pos over the
position rows and the (T, 2T-1) position scores) is left out on both sides,
an approximation that slightly favours the dense count when linear_pos is
factored.
"""

import logging
from typing import Callable, Dict

import torch
from torch import nn

from espnet_lowrank.calibration import FrameMaskHook
from espnet_lowrank.families.base import EncoderFamily

logger = logging.getLogger(__name__)

# Feature frames per second of ESPnet's usual fbank front-end (10 ms hop).
FEATURE_RATE = 100
# Utterance length at which "auto" attention compares FLOPs; typical ASR segments.
DEFAULT_WINDOW_SECONDS = 10.0


def _embed_mask(output) -> torch.Tensor:
    """(B, T) valid-frame mask from ``embed``'s ``(xs, masks)``, masks (B, 1, T)."""
    if not (isinstance(output, tuple) and len(output) == 2 and torch.is_tensor(output[1])):
        raise TypeError("the encoder's embed returned no mask; frame-masked calibration needs a "
                        "subsampling input layer (conv2d, conv2d2, conv2d6, conv2d8, ...)")
    masks = output[1]
    return masks[:, 0, :] if masks.dim() == 3 else masks


class EspnetFrameMask(FrameMaskHook):
    """Valid frames from ``embed``'s mask, plus the right rows for ``linear_pos``.

    ``linear_pos`` runs on the position embedding (1, 2T-1, d) ("latest") or
    (1, T, d) ("legacy"), not on the frames; while it runs, ``current`` holds
    the position rows that the valid frames use (relative distance below the
    longest valid length), and the frame mask is restored afterwards. The
    pre-hook runs before the statistics hook and the restoring hook after it,
    because ``attach`` is called after the statistics hooks are registered.
    """

    def __init__(self):
        super().__init__("embed", _embed_mask)
        self._saved = None

    def attach(self, encoder: nn.Module):
        handles = super().attach(encoder)
        for name, module in encoder.named_modules():
            if name.rsplit(".", 1)[-1] == "linear_pos":
                handles.append(module.register_forward_pre_hook(self._enter_pos))
                handles.append(module.register_forward_hook(self._leave_pos))
        return handles

    def _enter_pos(self, _module, inputs):
        self._saved = self.current
        if self.current is None:
            return
        pos_emb = inputs[0]
        n_pos, t = pos_emb.shape[1], self.current.shape[1]
        longest = int(self.current.sum(1).max())
        index = torch.arange(n_pos, device=pos_emb.device)
        if n_pos == 2 * t - 1:  # latest: index t-1 is distance 0
            valid = (index - (t - 1)).abs() < longest
        else:  # legacy: index i is distance i
            valid = index < longest
        self.current = valid.expand(pos_emb.shape[0], n_pos)

    def _leave_pos(self, _module, _inputs, _output):
        self.current = self._saved


def embed_frame_mask() -> FrameMaskHook:
    return EspnetFrameMask()


def subsampled_frames(embed: nn.Module, frames: int) -> int:
    """Frames after ``embed`` for ``frames`` input frames.

    ESPnet's subsampling layers are unpadded time convolutions whose masks are
    sliced to the conv output length, so the length follows from the conv
    arithmetic along time (kernel axis 0 of each Conv1d/Conv2d, in order).
    """
    if embed is None:
        return frames
    for module in embed.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if isinstance(module.padding, str):
                raise ValueError(f"cannot infer the subsampled length through {module}")
            k, s = module.kernel_size[0], module.stride[0]
            p, d = module.padding[0], module.dilation[0]
            frames = (frames + 2 * p - d * (k - 1) - 1) // s + 1
    return frames


def window_frames_fn(window_seconds: float) -> Callable[[nn.Module], int]:
    def window_frames(encoder: nn.Module) -> int:
        return subsampled_frames(getattr(encoder, "embed", None), int(round(window_seconds * FEATURE_RATE)))

    return window_frames


def espnet_family(name: str, encoder_class: str, layers: Dict[str, str], attention: str,
                  window_seconds: float = DEFAULT_WINDOW_SECONDS) -> EncoderFamily:
    """An ESPnet encoder family with the shared attention, mask and window rules."""
    return EncoderFamily(
        name=name,
        encoder_class=encoder_class,
        layers=layers,
        attention=attention,
        blocks=r"encoders\.\d+",
        frame_mask=embed_frame_mask,
        window_seconds=window_seconds,
        window_frames=window_frames_fn(window_seconds),
    )
