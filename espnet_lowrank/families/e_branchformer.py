"""ESPnet's E-Branchformer encoder: the attention branch (plain or relative-position), the cgMLP branch's
channel projections (``channel_proj1`` is ``Sequential(Linear, GELU)``, so its ``.0``), the merge
projection, and the optional (macaron) feed-forwards."""

from espnet_lowrank.families.espnet_common import espnet_family

FAMILY = espnet_family(
    name="e_branchformer",
    encoder_class="espnet2.asr.encoder.e_branchformer_encoder.EBranchformerEncoder",
    layers={
        r"encoders\.\d+\.attn\.linear_(q|k|v|out|pos)": "attention",
        r"encoders\.\d+\.feed_forward(_macaron)?\.w_(1|2)": "feed_forward",
        r"encoders\.\d+\.cgmlp\.channel_proj1\.0": "feed_forward",
        r"encoders\.\d+\.cgmlp\.channel_proj2": "feed_forward",
        r"encoders\.\d+\.merge_proj": "feed_forward",
    },
    attention=r"encoders\.\d+\.attn",
)
