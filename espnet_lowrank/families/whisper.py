"""Whisper's audio encoder (openai-whisper's AudioEncoder inside
``LocalWhisperEncoder``): four attention projections and a two-layer MLP per
block; every one of the 1500 frames counts, because the decoder cross-attends
to all of them, padding included.
"""

from torch import nn

from espnet_lowrank.families.base import EncoderFamily
from espnet_lowrank.modules.attention import ReducedSelfAttention


class WhisperReducedAttention(ReducedSelfAttention):
    """Drop-in for whisper.model.MultiHeadAttention in encoder self-attention."""

    def forward(self, x, xa=None, mask=None, kv_cache=None):
        if xa is not None or mask is not None:
            raise ValueError("reduced attention serves encoder self-attention only")
        return super().forward(x), None


def _parts(attn: nn.Module):
    return attn.query, attn.key, attn.value, attn.out, attn.n_head


def _reduced(attn: nn.Module) -> nn.Module:
    return WhisperReducedAttention(*_parts(attn))


FAMILY = EncoderFamily(
    name="whisper",
    encoder_class="espnet_lowrank.whisper.espnet_whisper.LocalWhisperEncoder",
    layers={
        r"encoders\.blocks\.\d+\.attn\.(query|key|value|out)": "attention",
        r"encoders\.blocks\.\d+\.mlp\.(0|2)": "feed_forward",
    },
    attention=r"encoders\.blocks\.\d+\.attn",
    attention_parts=_parts,
    reduced_attention=_reduced,
    frame_mask=None,
    window_seconds=30.0,
    window_frames=lambda encoder: encoder.encoders.positional_embedding.shape[0],
)
