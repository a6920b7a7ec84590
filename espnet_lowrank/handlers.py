"""Module type -> handler: how the plugin reads, factors, folds and quantizes each kind of module.

Lookup walks the MRO, so subclasses find their base's handler (``whisper.model.Linear`` -> ``nn.Linear``).
Optional packages' classes (ESPnet, openai-whisper) are keyed by their ``"module.QualName"`` path, so this
file imports neither. An unsupported type raises an error that lists the supported ones.
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Optional, Tuple

from torch import nn

from espnet_lowrank.modules.attention import ReducedSelfAttention, WhisperReducedAttention
from espnet_lowrank.modules.lowrank_linear import LowRankConv1d, LowRankLinear
from espnet_lowrank.modules.relpos_attention import ReducedMultiHeadedAttention, ReducedRelPositionAttention

# (query, key, value, out, n_head) of one attention module.
AttentionParts = Tuple[nn.Module, nn.Module, nn.Module, nn.Module, int]


@dataclass(frozen=True)
class Handler:
    """What the plugin may do with one module type."""

    kind: str  # "projection" or "attention"
    supports: Callable[[nn.Module], bool] = lambda m: True  # extra check: a 3x3 Conv1d is no projection
    dims: Optional[Callable[[nn.Module], Tuple[int, int]]] = None  # (d_in, d_out) of a projection
    # dense (W (d_out, d_in), b or None); None for an already factored module
    weight_and_bias: Optional[Callable[[nn.Module], tuple]] = None
    lowrank: Optional[type] = None  # the factored class that replaces it
    parts: Optional[Callable[[nn.Module], AttentionParts]] = None
    reduced: Optional[Callable[[nn.Module], nn.Module]] = None  # builds the rank-space attention
    # quantize_linears_: "quantize" swaps it for a dynamic int8 linear; "float" keeps it and everything under
    # it float (rank-space attention reads its projections' weights to fold them); None looks inside.
    int8: Optional[str] = None
    note: str = ""  # shown after the class path in the list of supported types


_REGISTRY: Dict[str, Handler] = {}
_BY_TYPE: Dict[type, Optional[str]] = {}


def register(class_path: str, handler: Handler) -> None:
    """Add (or replace) the handler of the class at ``class_path``."""
    _REGISTRY[class_path] = handler
    _BY_TYPE.clear()


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def find_handler(module: nn.Module) -> Optional[Handler]:
    """The handler of ``module``'s type or nearest registered base, or None."""
    cls = type(module)
    if cls not in _BY_TYPE:
        _BY_TYPE[cls] = next((_path(c) for c in cls.__mro__ if _path(c) in _REGISTRY), None)
    handler = _REGISTRY.get(_BY_TYPE[cls])
    return handler if handler is not None and handler.supports(module) else None


def supported(kind: str, need: str) -> str:
    """The registered class paths of ``kind`` whose handlers can do ``need``."""
    return ", ".join(sorted(p + h.note for p, h in _REGISTRY.items() if h.kind == kind and getattr(h, need)))


def handler_for(module: nn.Module, kind: str, need: str, action: str) -> Handler:
    """The handler of ``module`` that can do ``need``; else a TypeError naming the supported types."""
    handler = find_handler(module)
    if handler is None or handler.kind != kind or getattr(handler, need) is None:
        raise TypeError(f"cannot {action} {type(module).__name__}; supported: {supported(kind, need)}")
    return handler


# -- questions the rest of the package asks ------------------------------------

def layer_dims(layer: nn.Module) -> Tuple[int, int]:
    """(d_in, d_out) of a dense or low-rank projection."""
    return handler_for(layer, "projection", "dims", "measure").dims(layer)


def weight_and_bias(layer: nn.Module):
    """(W (d_out, d_in), b or None) of a dense projection."""
    return handler_for(layer, "projection", "weight_and_bias", "factor").weight_and_bias(layer)


def lowrank_class_for(layer: nn.Module) -> type:
    """The low-rank class that replaces a dense projection."""
    return handler_for(layer, "projection", "lowrank", "factor").lowrank


def is_lowrank(module: nn.Module) -> bool:
    handler = find_handler(module)
    return handler is not None and handler.kind == "projection" and handler.weight_and_bias is None


def is_dense_projection(module: nn.Module) -> bool:
    """A projection that could be factored (``nn.Linear``, 1x1 ``Conv1d``)."""
    handler = find_handler(module)
    return handler is not None and handler.kind == "projection" and handler.lowrank is not None


def attention_parts(attn: nn.Module) -> AttentionParts:
    """(query, key, value, out, n_head) of an attention module."""
    return handler_for(attn, "attention", "parts", "read the projections of").parts(attn)


def reduced_attention(attn: nn.Module) -> nn.Module:
    """The rank-space replacement of an attention module (itself if already reduced)."""
    return handler_for(attn, "attention", "reduced", "reduce").reduced(attn)


def int8_policy(module: nn.Module) -> Optional[str]:
    handler = find_handler(module)
    return handler.int8 if handler is not None else None


# -- the handlers -----------------------------------------------------------------

def _linear_dims(m):
    return m.in_features, m.out_features


register(_path(nn.Linear), Handler(
    kind="projection", dims=_linear_dims, weight_and_bias=lambda m: (m.weight, m.bias),
    lowrank=LowRankLinear, int8="quantize"))
register(_path(nn.Conv1d), Handler(
    kind="projection", supports=lambda m: m.kernel_size == (1,) and m.groups == 1,
    dims=lambda m: (m.in_channels, m.out_channels), weight_and_bias=lambda m: (m.weight[..., 0], m.bias),
    lowrank=LowRankConv1d, note=" (1x1, ungrouped)"))
register(_path(LowRankLinear), Handler(kind="projection", dims=_linear_dims))
register(_path(LowRankConv1d), Handler(kind="projection", dims=_linear_dims))


def _whisper_parts(attn):
    return attn.query, attn.key, attn.value, attn.out, attn.n_head


def _espnet_parts(attn):
    return attn.linear_q, attn.linear_k, attn.linear_v, attn.linear_out, attn.h


_ESPNET_ATTENTION = "espnet.nets.pytorch_backend.transformer.attention."
register("whisper.model.MultiHeadAttention", Handler(
    kind="attention", parts=_whisper_parts,
    reduced=lambda attn: WhisperReducedAttention(*_whisper_parts(attn))))
register(_ESPNET_ATTENTION + "MultiHeadedAttention", Handler(
    kind="attention", parts=_espnet_parts, reduced=ReducedMultiHeadedAttention.from_dense))
register(_ESPNET_ATTENTION + "RelPositionMultiHeadedAttention", Handler(
    kind="attention", parts=_espnet_parts,
    reduced=partial(ReducedRelPositionAttention.from_dense, legacy=False)))
register(_ESPNET_ATTENTION + "LegacyRelPositionMultiHeadedAttention", Handler(
    kind="attention", parts=_espnet_parts,
    reduced=partial(ReducedRelPositionAttention.from_dense, legacy=True)))
# Rank-space attention reads its projections' float weights: int8 must skip it.
register(_path(ReducedSelfAttention), Handler(
    kind="attention", parts=_whisper_parts, reduced=lambda attn: attn, int8="float"))
register(_path(ReducedMultiHeadedAttention), Handler(
    kind="attention", parts=_espnet_parts, reduced=lambda attn: attn, int8="float"))
