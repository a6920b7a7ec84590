"""What the ESPnet encoder adapters (Conformer, Transformer, E-Branchformer) share: the valid-frame mask
from ``embed`` and the encoder frame count of a window.

For relative-position attention, "auto" attention compares FLOPs of q/k/v/out only (the position term
is left out on both sides), which slightly favours the dense count when linear_pos is factored.
"""

from typing import Dict

import torch
from torch import nn

from espnet_lowrank.calibration import FrameMaskHook
from espnet_lowrank.families.base import EncoderFamily

# Feature frames per second of ESPnet's usual fbank front-end (10 ms hop).
FEATURE_RATE = 100
# Utterance length at which "auto" attention compares FLOPs; typical ASR segments.
WINDOW_SECONDS = 10.0


def _embed_mask(output) -> torch.Tensor:
    """(B, T) valid-frame mask from ``embed``'s ``(xs, masks)``, masks (B, 1, T)."""
    if not (isinstance(output, tuple) and len(output) == 2 and torch.is_tensor(output[1])):
        raise TypeError("the encoder's embed returned no mask; frame-masked calibration needs a "
                        "subsampling input layer (conv2d, conv2d2, conv2d6, conv2d8, ...)")
    masks = output[1]
    return masks[:, 0, :] if masks.dim() == 3 else masks


class EspnetFrameMask(FrameMaskHook):
    """Valid frames from ``embed``'s mask, plus the right rows for ``linear_pos``.

    ``linear_pos`` runs on the position embedding (1, 2T-1, d) ("latest") or (1, T, d) ("legacy"); while
    it runs, ``current`` holds the rows that the valid frames use (relative distance below the longest
    valid length). ``attach`` comes after the statistics hooks, so the pre-hook runs before them and the
    restoring hook after.
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


def subsampled_frames(embed: nn.Module, frames: int) -> int:
    """Frames after ``embed`` for ``frames`` input frames: ESPnet's subsampling layers are unpadded time
    convolutions whose masks are sliced to the conv output (time is axis 0 of each Conv1d/Conv2d)."""
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


def window_frames(encoder: nn.Module) -> int:
    return subsampled_frames(getattr(encoder, "embed", None), int(round(WINDOW_SECONDS * FEATURE_RATE)))


def espnet_family(name: str, encoder_class: str, layers: Dict[str, str], attention: str) -> EncoderFamily:
    """An ESPnet encoder family with the shared blocks, mask and window rules."""
    return EncoderFamily(name=name, encoder_class=encoder_class, layers=layers, attention=attention,
                         blocks=r"encoders\.\d+", frame_mask=EspnetFrameMask, window_seconds=WINDOW_SECONDS,
                         window_frames=window_frames)
