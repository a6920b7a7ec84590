"""ESPnet's Conformer encoder: self-attention (plain or relative-position, with ``linear_pos``), the two
macaron feed-forwards, and the convolution module's 1x1 pointwise convolutions (factored as linears)."""

from espnet_lowrank.families.espnet_common import espnet_family

FAMILY = espnet_family(
    name="conformer",
    encoder_class="espnet2.asr.encoder.conformer_encoder.ConformerEncoder",
    layers={
        r"encoders\.\d+\.self_attn\.linear_(q|k|v|out|pos)": "attention",
        r"encoders\.\d+\.feed_forward(_macaron)?\.w_(1|2)": "feed_forward",
        r"encoders\.\d+\.conv_module\.pointwise_conv(1|2)": "feed_forward",
    },
    attention=r"encoders\.\d+\.self_attn",
)
