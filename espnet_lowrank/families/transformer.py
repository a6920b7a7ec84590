"""ESPnet's Transformer encoder: MultiHeadedAttention and one feed-forward per block."""

from espnet_lowrank.families.espnet_common import espnet_family

FAMILY = espnet_family(
    name="transformer",
    encoder_class="espnet2.asr.encoder.transformer_encoder.TransformerEncoder",
    layers={
        r"encoders\.\d+\.self_attn\.linear_(q|k|v|out)": "attention",
        r"encoders\.\d+\.feed_forward\.w_(1|2)": "feed_forward",
    },
    attention=r"encoders\.\d+\.self_attn",
)
