"""Swapping modules in place: dense projections -> low-rank factors, attention -> rank-space attention.
Module paths never change, so the state-dict keys follow from the plan (``...w_1.weight`` ->
``...w_1.down.weight``, ``...w_1.up.weight``, ``...w_1.up.bias``)."""

import logging
from collections import Counter
from typing import Dict

from torch import nn

from espnet_lowrank.factorize import Spectrum, factor_weights
from espnet_lowrank.families.base import EncoderFamily
from espnet_lowrank.handlers import is_lowrank, layer_dims, lowrank_class_for, weight_and_bias
from espnet_lowrank.modules.folding import reduced_is_cheaper
from espnet_lowrank.nn_utils import set_submodule

logger = logging.getLogger(__name__)


def _planned_layer(encoder: nn.Module, name: str, rank: int) -> nn.Module:
    try:
        layer = encoder.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the plan names layer {name!r}, which the encoder does not have; "
                         "the low-rank config does not match this model") from None
    d_in, d_out = layer_dims(layer)
    if not 0 < rank <= min(d_in, d_out):
        raise ValueError(f"rank {rank} for {name} is out of range for a {d_out}x{d_in} layer "
                         f"(max {min(d_in, d_out)})")
    return layer


def build_lowrank_layers_(encoder: nn.Module, ranks: Dict[str, int]) -> None:
    """Replace each planned layer by an (uninitialized) low-rank layer of the planned rank; the weights
    come later from a state dict."""
    for name, rank in ranks.items():
        layer = _planned_layer(encoder, name, rank)
        if is_lowrank(layer):
            raise ValueError(f"{name} is already low-rank")
        w, _ = weight_and_bias(layer)
        # Always a bias: b′ = μ + V Vᵀ(b − μ) is non-zero even where b is absent.
        new = lowrank_class_for(layer)(w.shape[1], w.shape[0], rank, bias=True)
        set_submodule(encoder, name, new.to(device=w.device, dtype=w.dtype))


def factorize_layers_(encoder: nn.Module, ranks: Dict[str, int], spectra: Dict[str, Spectrum]) -> None:
    """Replace each planned dense layer by its PCA factors."""
    for name, rank in ranks.items():
        layer = _planned_layer(encoder, name, rank)
        w, b = weight_and_bias(layer)
        w1, w2, b_new = factor_weights(w, b, spectra[name], rank)
        cast = dict(device=w.device, dtype=w.dtype)
        new = lowrank_class_for(layer).from_factors(w1.to(**cast), w2.to(**cast), b_new.to(**cast))
        set_submodule(encoder, name, new)


def choose_attention_(encoder: nn.Module, family: EncoderFamily, mode: str, frames: int) -> Dict[str, str]:
    """Swap attention modules for the rank-space version where ``mode`` asks for it ("reduced"), or where
    it needs fewer FLOPs over ``frames`` frames ("auto"). Returns module name -> "reduced" | "dense"."""
    chosen = {}
    for name, attn in family.attention_modules(encoder).items():
        # Dense mode never asks for the parts: any attention type may stay dense.
        parts = family.attention_parts(attn) if mode != "dense" else None
        reduce = mode == "reduced" or (mode == "auto" and reduced_is_cheaper(*parts, frames))
        if reduce:
            set_submodule(encoder, name, family.reduced_attention(attn))
        chosen[name] = "reduced" if reduce else "dense"
    counts = Counter(chosen.values())
    logger.info("attention: %d reduced, %d dense", counts["reduced"], counts["dense"])
    return chosen
