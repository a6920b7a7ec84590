"""The handler registry (module type -> read, factor, fold, quantize), and the
regressions that it and the explicit switches fix: int8 on ESPnet reduced
attention (bug 4), dense attention for any attention type and exact
train/eval modes (bug 12)."""

import copy

import pytest
import torch
from torch import nn

from espnet_lowrank import handlers
from espnet_lowrank.apply import choose_attention_
from espnet_lowrank.modes import kept_modes, restore_modes, training_modes
from espnet_lowrank.modules.attention import ReducedSelfAttention, set_attention_options_
from espnet_lowrank.modules.folding import factors
from espnet_lowrank.modules.lowrank_linear import LowRankConv1d, LowRankLinear
from espnet_lowrank.quantize import quantize_linears_, quantized_linears


def test_projection_handlers_follow_the_mro():
    whisper_model = pytest.importorskip("whisper.model")
    linear = whisper_model.Linear(6, 4)  # a subclass of nn.Linear
    assert handlers.layer_dims(linear) == (6, 4)
    w, b = handlers.weight_and_bias(linear)
    assert w is linear.weight and b is linear.bias
    assert handlers.lowrank_class_for(linear) is LowRankLinear
    assert handlers.int8_policy(linear) == "quantize"

    conv = nn.Conv1d(6, 4, 1)
    w, b = handlers.weight_and_bias(conv)
    assert w.shape == (4, 6) and torch.equal(w, conv.weight[..., 0]) and b is conv.bias
    assert handlers.lowrank_class_for(conv) is LowRankConv1d

    lowrank = LowRankLinear(6, 4, 2)
    assert handlers.layer_dims(lowrank) == (6, 4)
    assert handlers.is_lowrank(lowrank) and not handlers.is_lowrank(linear)
    w1, w2, bias = factors(lowrank)
    assert w1 is lowrank.down.weight and w2 is lowrank.up.weight and bias is lowrank.up.bias


def test_unsupported_types_raise_with_the_supported_list():
    for module, call in ((nn.Conv1d(6, 4, 3), handlers.weight_and_bias),  # not 1x1
                         (nn.Conv1d(6, 4, 1, groups=2), handlers.weight_and_bias),
                         (nn.LayerNorm(4), handlers.layer_dims),
                         (nn.LayerNorm(4), handlers.attention_parts)):
        with pytest.raises(TypeError, match="supported: ") as err:
            call(module)
        assert "torch.nn.modules.linear.Linear" in str(err.value) or "MultiHeadedAttention" in str(err.value)
    with pytest.raises(TypeError, match="already|supported") as err:
        handlers.lowrank_class_for(LowRankLinear(6, 4, 2))
    assert "LowRankLinear" in str(err.value)


def test_espnet_attention_handlers():
    from espnet.nets.pytorch_backend.transformer.attention import (
        LegacyRelPositionMultiHeadedAttention,
        MultiHeadedAttention,
        RelPositionMultiHeadedAttention,
    )

    from espnet_lowrank.modules.relpos_attention import (
        ReducedMultiHeadedAttention,
        ReducedRelPositionAttention,
    )

    plain = MultiHeadedAttention(4, 32, 0.0)
    assert handlers.attention_parts(plain) == (plain.linear_q, plain.linear_k, plain.linear_v,
                                               plain.linear_out, 4)
    reduced = handlers.reduced_attention(plain)
    assert type(reduced) is ReducedMultiHeadedAttention
    assert handlers.reduced_attention(reduced) is reduced
    for cls, legacy in ((RelPositionMultiHeadedAttention, False), (LegacyRelPositionMultiHeadedAttention, True)):
        rel = handlers.reduced_attention(cls(4, 32, 0.0))
        assert type(rel) is ReducedRelPositionAttention and rel.legacy is legacy
        assert handlers.int8_policy(rel) == "float"
    assert handlers.int8_policy(reduced) == "float"
    assert handlers.int8_policy(plain) is None  # look inside: its linears quantize


def test_int8_keeps_espnet_reduced_attention_float():
    """Bug 4: int8 on a Conformer (real ESPnet ConformerEncoder, rel_pos) with
    reduced attention crashed at every forward (quantized linear_q has no
    ``up.weight``); the reduced attention must stay float and the int8 model
    stay close to the float compressed one."""
    from test_families import _batch, _build, _calibrated, _encode, _factored_copy

    family, encoder = _build("conformer_latest_relpos")
    stats, _ = _calibrated(encoder, family, num_batches=2)
    compressed = _factored_copy(encoder, family, stats, fraction=0.5)
    chosen = choose_attention_(compressed, family, "reduced", family.window_frames(compressed))
    assert set(chosen.values()) == {"reduced"}
    int8 = copy.deepcopy(compressed)
    count = quantize_linears_(int8)
    assert count == quantized_linears(int8) > 0
    # every projection inside the two reduced attentions stayed float
    for name in chosen:
        attn = int8.get_submodule(name)
        assert quantized_linears(attn) == 0
        assert isinstance(attn.linear_q.down, nn.Linear)
    batch = _batch(seed=11)
    want, valid, _ = _encode(compressed, batch)
    got, _, _ = _encode(int8, batch)
    diff = (got - want)[valid].abs().max().item()
    rel = ((got - want)[valid].norm() / want[valid].norm()).item()
    # measured (VNNI CPU): max abs diff 0.028, relative L2 0.0064, outputs up to 3.5
    assert diff < 0.1, diff
    assert rel < 0.02, rel


def _attention(d=32, h=4, seed=0):
    torch.manual_seed(seed)
    layers = [LowRankLinear(d, d, 8) for _ in range(4)]
    for layer in layers:
        nn.init.normal_(layer.up.bias, std=0.1)
    return layers, ReducedSelfAttention(*layers, h, dispatch="reduced")


def test_attention_switches_are_explicit():
    layers, attn = _attention()
    assert ReducedSelfAttention(*layers, 4).dispatch == "flops"  # deterministic default
    with pytest.raises(ValueError, match="dispatch"):
        ReducedSelfAttention(*layers, 4, dispatch="fastest")
    holder = nn.Sequential(attn, ReducedSelfAttention(*layers, 4))
    assert set_attention_options_(holder, dispatch="measure") == 2
    assert [m.dispatch for m in holder] == ["measure", "measure"]


class _OddAttention(nn.Module):
    """An attention type the registry does not know."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_dense_attention_never_asks_for_the_parts():
    """Bug 12: ``attention: dense`` crashed on an unsupported attention type,
    because the parts were read before the mode was checked."""
    from test_families import _batch, _build, _encode

    family, encoder = _build("transformer")
    batch = _batch(seed=3)
    want, valid, _ = _encode(encoder, batch)
    for block in encoder.encoders:
        block.self_attn = _OddAttention(block.self_attn)
    family_attn = r"encoders\.\d+\.self_attn"
    assert family.attention == family_attn
    chosen = choose_attention_(encoder, family, "dense", 100)
    assert chosen == {"encoders.0.self_attn": "dense", "encoders.1.self_attn": "dense"}
    got, _, _ = _encode(encoder, batch)
    assert torch.equal(got[valid], want[valid])
    for mode in ("reduced", "auto"):
        with pytest.raises(TypeError, match="_OddAttention; supported: .*MultiHeadedAttention"):
            choose_attention_(encoder, family, mode, 100)


def test_modes_are_restored_per_submodule():
    """Bug 12: ``model.train(was_training)`` overwrote mixed submodule modes."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5), nn.Linear(2, 2)))
    model.train()
    model[1].eval()  # a frozen part in eval inside a training model
    before = training_modes(model)
    assert before == {"": True, "0": True, "1": False, "1.0": False, "1.1": False}
    with kept_modes(model):
        model.eval()
        assert not any(m.training for m in model.modules())
    assert training_modes(model) == before
    with pytest.raises(RuntimeError):
        with kept_modes(model):
            model.eval()
            raise RuntimeError("calibration failed")
    assert training_modes(model) == before
    saved = training_modes(model)
    model.eval()
    restore_modes(model, saved)
    assert training_modes(model) == before


def test_each_family_is_one_adapter_file_plus_its_default_yaml():
    """Families are found by their module-level ``FAMILY``; each has its
    default config in conf/lowrank/."""
    from pathlib import Path

    from espnet_lowrank import families

    found = families.all_families()
    assert sorted(f.name for f in found.values()) == ["conformer", "e_branchformer", "transformer", "whisper"]
    assert not hasattr(families, "family_by_name")
    conf = Path(__file__).resolve().parents[1] / "conf" / "lowrank"
    for family in found.values():
        assert (conf / f"{family.name}.yaml").is_file(), family.name
