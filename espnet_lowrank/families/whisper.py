"""Whisper's audio encoder (``LocalWhisperEncoder``): four attention projections and a two-layer MLP per
block; all 1500 frames count, because the decoder cross-attends to all of them, padding included."""

from espnet_lowrank.families.base import EncoderFamily

FAMILY = EncoderFamily(
    name="whisper",
    encoder_class="espnet_lowrank.whisper.espnet_whisper.LocalWhisperEncoder",
    layers={
        r"encoders\.blocks\.\d+\.attn\.(query|key|value|out)": "attention",
        r"encoders\.blocks\.\d+\.mlp\.(0|2)": "feed_forward",
    },
    attention=r"encoders\.blocks\.\d+\.attn",
    blocks=r"encoders\.blocks\.\d+",
    frame_mask=None,
    window_seconds=30.0,
    input_seconds=30.0,
    window_frames=lambda encoder: encoder.encoders.positional_embedding.shape[0],
)
