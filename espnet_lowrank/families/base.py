"""What a family adapter answers: which layers, which attention, which frames (how each module type is
read, factored or quantized is the handler registry's question, ``espnet_lowrank/handlers.py``)."""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from espnet_lowrank.calibration import FrameMaskHook
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.handlers import attention_parts, layer_dims, reduced_attention


def matching_modules(root: nn.Module, pattern: Optional[str]) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every submodule whose name fullmatches ``pattern`` (none for None), in order."""
    return [(n, m) for n, m in root.named_modules() if pattern and re.fullmatch(pattern, n)]


@dataclass(frozen=True)
class EncoderFamily:
    """One encoder family, described as data; regexes fullmatch module names inside the encoder."""

    name: str  # also the default config's file stem in conf/lowrank/
    encoder_class: str  # "package.module.Class" of the dense encoder
    layers: Dict[str, str]  # regex -> role, "attention" or "feed_forward" (the role picks θ)
    attention: str  # the self-attention modules
    blocks: str  # the encoder blocks, in forward order (block-wise recovery)
    # builds the hook that yields the valid frames; None: every frame counts (Whisper's decoder sees all 1500)
    frame_mask: Optional[Callable[[], FrameMaskHook]]
    window_seconds: float  # input length used to report FLOPs
    # encoder frames for window_seconds of audio: the sequence length at which "auto" attention compares FLOPs
    window_frames: Callable[[nn.Module], int]
    # the most audio the encoder can read (Whisper: 30 s), or None; calibration and recovery read no more
    input_seconds: Optional[float] = None

    def target_layers(self, encoder: nn.Module,
                      config: Optional[LowRankConfig] = None) -> Dict[str, Tuple[str, int, int]]:
        """name -> (role, d_in, d_out) for every layer to factor, in model order."""
        chosen = (config or LowRankConfig()).targets
        targets = {}
        for name, module in encoder.named_modules():
            role = next((r for pattern, r in self.layers.items() if re.fullmatch(pattern, name)), None)
            if role is None or any(re.fullmatch(p, name) for p in chosen.exclude_modules):
                continue
            if chosen.target_modules is not None and not re.fullmatch(chosen.target_modules, name):
                continue
            targets[name] = (role, *layer_dims(module))
        if not targets:
            raise ValueError(f"no {self.name} layers matched the config's target_modules")
        return targets

    def attention_modules(self, encoder: nn.Module) -> Dict[str, nn.Module]:
        return dict(matching_modules(encoder, self.attention))

    def block_modules(self, encoder: nn.Module) -> List[Tuple[str, nn.Module]]:
        return matching_modules(encoder, self.blocks)

    # the same for every family: the handler registry answers
    attention_parts = staticmethod(attention_parts)
    reduced_attention = staticmethod(reduced_attention)
