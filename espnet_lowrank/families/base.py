"""What a family adapter answers: which layers, which attention, which frames.

How each module type is read, factored, folded or quantized is not a family
question: the handler registry (``espnet_lowrank/handlers.py``) answers it.
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from espnet_lowrank.calibration import FrameMaskHook
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.handlers import AttentionParts, attention_parts, layer_dims, reduced_attention


def matching_modules(root: nn.Module, pattern: Optional[str]) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every submodule of ``root`` whose name fullmatches
    ``pattern`` (none for None), in forward order."""
    return [(n, m) for n, m in root.named_modules() if pattern and re.fullmatch(pattern, n)]


@dataclass(frozen=True)
class EncoderFamily:
    """One encoder family, described as data.

    Attributes:
        name: short name, also the default config's file stem in conf/lowrank/.
        encoder_class: "package.module.Class" of the dense encoder.
        layers: regex (fullmatch over module names inside the encoder) -> role,
            "attention" or "feed_forward"; the role picks θ.
        attention: regex of the self-attention modules.
        blocks: regex of the encoder blocks, in forward order (block-wise recovery).
        frame_mask: builds the hook that yields the valid frames, or None when
            every frame counts (Whisper: the decoder sees all 1500).
        window_seconds: input length used to report FLOPs.
        input_seconds: the most audio the encoder can read (Whisper: 30 s), or
            None; calibration and recovery read no more of a file.
        window_frames: encoder frames for ``window_seconds`` of audio; sets the
            sequence length at which "auto" attention compares FLOPs.
    """

    name: str
    encoder_class: str
    layers: Dict[str, str]
    attention: str
    blocks: str
    frame_mask: Optional[Callable[[], FrameMaskHook]]
    window_seconds: float
    window_frames: Callable[[nn.Module], int]
    input_seconds: Optional[float] = None

    def role_of(self, name: str) -> Optional[str]:
        for pattern, role in self.layers.items():
            if re.fullmatch(pattern, name):
                return role
        return None

    def target_layers(
        self, encoder: nn.Module, config: Optional[LowRankConfig] = None
    ) -> Dict[str, Tuple[str, int, int]]:
        """name -> (role, d_in, d_out) for every layer to factor, in model order."""
        config = config or LowRankConfig()
        targets = {}
        for name, module in encoder.named_modules():
            role = self.role_of(name)
            if role is None:
                continue
            if config.targets.target_modules is not None and not re.fullmatch(config.targets.target_modules, name):
                continue
            if any(re.fullmatch(p, name) for p in config.targets.exclude_modules):
                continue
            d_in, d_out = layer_dims(module)
            targets[name] = (role, d_in, d_out)
        if not targets:
            raise ValueError(f"no {self.name} layers matched the config's target_modules")
        return targets

    def attention_modules(self, encoder: nn.Module) -> Dict[str, nn.Module]:
        return dict(matching_modules(encoder, self.attention))

    def block_modules(self, encoder: nn.Module) -> List[Tuple[str, nn.Module]]:
        """(name, block) of every encoder block, in forward order."""
        return matching_modules(encoder, self.blocks)

    @staticmethod
    def attention_parts(attn: nn.Module) -> AttentionParts:
        """(query, key, value, out, n_head) of one attention module (registry)."""
        return attention_parts(attn)

    @staticmethod
    def reduced_attention(attn: nn.Module) -> nn.Module:
        """The rank-space attention built from one attention module (registry)."""
        return reduced_attention(attn)
