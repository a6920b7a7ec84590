"""ESPnet encoder families on small real encoders with random weights:
full-rank factoring is exact (dense and rank-space attention, padded batches,
both relative-position attentions), calibration counts only valid frames,
error grows as rank shrinks, and the family table finds (or rejects) encoders."""

import copy

import pytest
import torch
from torch import nn

from espnet_lowrank.apply import choose_attention_, factorize_layers_
from espnet_lowrank.calibration import calibrate
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.families import all_families, family_for
from espnet_lowrank.families.conformer import FAMILY as CONFORMER
from espnet_lowrank.families.e_branchformer import FAMILY as E_BRANCHFORMER
from espnet_lowrank.families.transformer import FAMILY as TRANSFORMER
from espnet_lowrank.handlers import reduced_attention
from espnet_lowrank.modules.relpos_attention import ReducedMultiHeadedAttention, ReducedRelPositionAttention

INPUT_SIZE = 20
LENGTHS = (120, 90, 61)  # padded batch of three, different lengths
SMALL = dict(output_size=64, attention_heads=4, num_blocks=2, linear_units=128,
             input_layer="conv2d", dropout_rate=0.1, use_flash_attn=False)


def _conformer(**kw):
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    return ConformerEncoder(INPUT_SIZE, macaron_style=True, cnn_module_kernel=7, **SMALL, **kw)


def _transformer():
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

    return TransformerEncoder(INPUT_SIZE, **SMALL)


def _e_branchformer(**kw):
    from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder

    return EBranchformerEncoder(INPUT_SIZE, cgmlp_linear_units=128, cgmlp_conv_kernel=7,
                                use_ffn=True, macaron_ffn=True, **SMALL, **kw)


# name -> (family, builder); legacy rel_pos_type turns rel_pos/rel_selfattn
# into legacy_rel_pos/legacy_rel_selfattn inside ESPnet.
ENCODERS = {
    "conformer_legacy_relpos": (CONFORMER, lambda: _conformer(
        rel_pos_type="legacy", pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn")),
    "conformer_latest_relpos": (CONFORMER, lambda: _conformer(
        rel_pos_type="latest", pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn")),
    "conformer_latest_zero_triu": (CONFORMER, lambda: _conformer(
        rel_pos_type="latest", pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn",
        zero_triu=True)),
    "conformer_abs_pos": (CONFORMER, lambda: _conformer(
        rel_pos_type="latest", pos_enc_layer_type="abs_pos", selfattention_layer_type="selfattn")),
    "transformer": (TRANSFORMER, _transformer),
    "e_branchformer_latest_relpos": (E_BRANCHFORMER, _e_branchformer),
    "e_branchformer_legacy_relpos": (E_BRANCHFORMER, lambda: _e_branchformer(rel_pos_type="legacy")),
}


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    speech = torch.randn(len(LENGTHS), max(LENGTHS), INPUT_SIZE, generator=g)
    lengths = torch.tensor(LENGTHS)
    for i, n in enumerate(LENGTHS):
        speech[i, n:] = 0.0
    return speech, lengths


def _build(key):
    torch.manual_seed(0)
    family, make = ENCODERS[key]
    return family, make().eval()


def _encode(encoder, batch):
    with torch.no_grad():
        out, olens, _ = encoder(*batch)
    valid = torch.arange(out.shape[1])[None, :] < olens[:, None]
    return out, valid, olens


def _calibrated(encoder, family, num_batches=4):
    names = list(family.target_layers(encoder))
    batches = [_batch(seed) for seed in range(num_batches)]
    stats = calibrate(lambda s, l: encoder(s, l), encoder, batches, names, frame_mask=family.frame_mask())
    return stats, batches


def _factored_copy(encoder, family, stats, fraction=1.0):
    lowrank = copy.deepcopy(encoder)
    targets = family.target_layers(encoder)
    ranks = {n: max(1, int(min(d_in, d_out) * fraction)) for n, (_, d_in, d_out) in targets.items()}
    factorize_layers_(lowrank, ranks, {n: spectrum(stats[n]) for n in ranks})
    return lowrank


@pytest.mark.parametrize("attention", ["dense", "reduced"])
@pytest.mark.parametrize("key", sorted(ENCODERS))
def test_full_rank_matches_dense_encoder(key, attention):
    family, encoder = _build(key)
    stats, _ = _calibrated(encoder, family)
    lowrank = _factored_copy(encoder, family, stats)
    chosen = choose_attention_(lowrank, family, attention, family.window_frames(lowrank))
    assert set(chosen.values()) == {attention}
    if attention == "reduced":
        reduced = [m for m in lowrank.modules() if isinstance(m, ReducedMultiHeadedAttention)]
        assert len(reduced) == 2
        if "relpos" in key or "zero_triu" in key:
            assert all(isinstance(m, ReducedRelPositionAttention) for m in reduced)
            assert all(m.legacy == ("legacy" in key) for m in reduced)
    test_batch = _batch(seed=100)
    want, valid, _ = _encode(encoder, test_batch)
    got, valid_lowrank, _ = _encode(lowrank, test_batch)
    assert torch.equal(valid, valid_lowrank)
    diff = (got - want)[valid].abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("key", ["conformer_legacy_relpos", "conformer_latest_relpos", "transformer"])
def test_reduced_attention_over_dense_projections_matches(key):
    """Rank-space attention with unfactored projections (the identity factor)."""
    family, encoder = _build(key)
    reduced = copy.deepcopy(encoder)
    choose_attention_(reduced, family, "reduced", 100)
    batch = _batch(seed=7)
    want, valid, _ = _encode(encoder, batch)
    got, _, _ = _encode(reduced, batch)
    assert (got - want)[valid].abs().max().item() < 1e-4


def test_state_dict_keys_survive_reduced_attention():
    family, encoder = _build("conformer_latest_relpos")
    stats, _ = _calibrated(encoder, family, num_batches=2)
    lowrank = _factored_copy(encoder, family, stats, fraction=0.5)
    before = set(lowrank.state_dict())
    choose_attention_(lowrank, family, "reduced", 100)
    assert set(lowrank.state_dict()) == before
    assert "encoders.0.self_attn.linear_pos.down.weight" in before
    assert "encoders.0.self_attn.pos_bias_u" in before


@pytest.mark.parametrize("legacy", [False, True])
def test_relpos_attention_with_full_mask_and_low_rank_pos(legacy):
    """(B, T, T) masks with fully masked rows, a factored (biased) linear_pos,
    and a batch-1 position embedding, against the dense module."""
    from espnet.nets.pytorch_backend.transformer.attention import (
        LegacyRelPositionMultiHeadedAttention,
        RelPositionMultiHeadedAttention,
    )

    from espnet_lowrank.modules.lowrank_linear import LowRankLinear

    torch.manual_seed(0)
    d, h, b, t = 32, 4, 2, 9
    cls = LegacyRelPositionMultiHeadedAttention if legacy else RelPositionMultiHeadedAttention
    dense = cls(h, d, 0.0, zero_triu=True).eval()
    # A factored linear_pos carries a bias; give the dense one the same map.
    lowrank_pos = LowRankLinear(d, d, 8)
    nn.init.normal_(lowrank_pos.up.bias)
    dense.linear_pos = lowrank_pos
    reduced = reduced_attention(copy.deepcopy(dense)).eval()
    x = torch.randn(b, t, d)
    pos_emb = torch.randn(1, t if legacy else 2 * t - 1, d)
    mask = torch.ones(b, t, t, dtype=torch.bool)
    mask[1, :, 6:] = False
    mask[1, 6:, :] = False  # padded queries: fully masked rows
    with torch.no_grad():
        want = dense(x, x, x, pos_emb, mask)
        got = reduced(x, x, x, pos_emb, mask)
    assert (got - want).abs().max().item() < 1e-5


def test_reduced_attention_rejects_cross_attention():
    from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention

    reduced = reduced_attention(MultiHeadedAttention(4, 32, 0.0))
    x, y = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with pytest.raises(ValueError, match="self-attention only"):
        reduced(x, y, y, None)


def test_masked_calibration_counts_valid_frames():
    family, encoder = _build("conformer_latest_relpos")
    stats, batches = _calibrated(encoder, family, num_batches=2)
    valid_frames = sum(int(_encode(encoder, batch)[2].sum()) for batch in batches)
    for name in ("encoders.0.feed_forward.w_1", "encoders.1.self_attn.linear_q",
                 "encoders.1.conv_module.pointwise_conv2"):
        assert stats[name].count == valid_frames
    # linear_pos sees the position rows within the longest valid length.
    longest = int(_encode(encoder, batches[0])[2].max())
    assert stats["encoders.0.self_attn.linear_pos"].count == len(batches) * (2 * longest - 1)


def test_error_grows_as_rank_shrinks():
    family, encoder = _build("transformer")
    stats, _ = _calibrated(encoder, family)
    batch = _batch(seed=100)
    want, valid, _ = _encode(encoder, batch)
    errors = []
    for fraction in (1.0, 0.5, 0.25):
        got, _, _ = _encode(_factored_copy(encoder, family, stats, fraction), batch)
        errors.append(((got - want)[valid].norm() / want[valid].norm()).item())
    assert errors[0] < 1e-5 < errors[1] < errors[2], errors


@pytest.mark.parametrize("key", ["conformer_latest_relpos", "transformer", "e_branchformer_latest_relpos"])
def test_family_lookup_and_window_frames(key):
    family, encoder = _build(key)
    assert family_for(encoder) is all_families()[family.encoder_class]
    assert family_for(encoder).name == family.name
    frames = int(family.window_seconds * 100)
    with torch.no_grad():
        _, olens, _ = encoder(torch.zeros(1, frames, INPUT_SIZE), torch.tensor([frames]))
    assert family.window_frames(encoder) == int(olens[0])


def test_unknown_encoder_is_rejected_with_supported_list():
    with pytest.raises(TypeError, match="supported") as err:
        family_for(nn.Linear(2, 2))
    for family in (CONFORMER, TRANSFORMER, E_BRANCHFORMER):
        assert family.encoder_class in str(err.value)


def test_auto_attention_picks_reduced_only_at_small_ranks():
    family, encoder = _build("conformer_latest_relpos")
    stats, _ = _calibrated(encoder, family, num_batches=2)
    frames = family.window_frames(encoder)
    full = _factored_copy(encoder, family, stats, fraction=1.0)
    tiny = _factored_copy(encoder, family, stats, fraction=1 / 16)
    assert set(choose_attention_(full, family, "auto", frames).values()) == {"dense"}
    assert set(choose_attention_(tiny, family, "auto", frames).values()) == {"reduced"}


def test_int8_smoothing_is_refused_where_no_sites_are_declared():
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import compress

    holder = nn.Module()
    holder.encoder = _conformer()
    with pytest.raises(ValueError, match="no smoothing sites are declared for conformer"):
        compress(holder, [], LowRankConfig(int8_smoothing=True))
