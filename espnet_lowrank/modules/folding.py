"""The folding core of rank-space attention, shared by the Whisper (``attention``) and ESPnet
(``relpos_attention``) adapters.

Every projection is up ∘ down, x -> W2 (W1 x) + b, with W1 (k, d_in) and W2 (d_out, k); a dense one is
(identity, W) on the input side, (W, identity) on the output side. Softmax drops terms constant along
keys, so head h's scores (Q1 W_q2,hᵀ + b_q,h) W_k2,h K1ᵀ meet the shared rank-space keys K1 through
M_h = W_q2,hᵀ W_k2,h; values stay in rank space too: P_h (V1 W_v2,hᵀ + b_v,h) W_o1,hᵀ =
(P_h V1) N_h + rowsum(P_h) b_v,h W_o1,hᵀ with N_h = W_v2,hᵀ W_o1,hᵀ.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def factors(proj: nn.Module):
    """(W1 (k, d_in) or None for identity, W2 (d_out, k), bias or None); a dense ``nn.Linear`` is
    (identity, W, b), anything else without ``factors()`` cannot be folded."""
    if hasattr(proj, "factors"):
        return proj.factors()
    if isinstance(proj, nn.Linear):
        return None, proj.weight, proj.bias
    raise TypeError(f"cannot fold {type(proj).__name__} into rank-space attention; "
                    "supported: nn.Linear (and subclasses), LowRankLinear")


def rank_input(proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """W1 x, or x itself for a dense projection."""
    w1, _, _ = factors(proj)
    return x if w1 is None else F.linear(x, w1)


def rank_of(proj: nn.Module) -> int:
    """Width of the rank-space side of an input projection (q, k, v)."""
    w1, w2, _ = factors(proj)
    return w2.shape[1] if w1 is None else w1.shape[0]


def out_rank(proj: nn.Module) -> Optional[int]:
    """The rank of a factored output projection, None if it is dense."""
    w1, _, _ = factors(proj)
    return None if w1 is None else w1.shape[0]


def fold_scores(query: nn.Module, other: nn.Module, n_head: int,
                extra_bias: Optional[torch.Tensor] = None):
    """M (H, kq, kp) and c (H, kp) or None (no bias at all), both scaled by d_k^-1/2: the queries folded
    against the rank-space side of ``other`` (keys or positions); ``extra_bias`` (H, d_k) is added to the
    query bias (ESPnet's pos_bias_u/v)."""
    _, wq2, bq = factors(query)
    _, w2, _ = factors(other)
    d_k = wq2.shape[0] // n_head
    scale = d_k ** -0.5
    w2_h = w2.reshape(n_head, d_k, -1)
    m = scale * wq2.reshape(n_head, d_k, -1).transpose(1, 2) @ w2_h
    bias = None if bq is None else bq.reshape(n_head, d_k)
    if extra_bias is not None:
        bias = extra_bias if bias is None else bias + extra_bias
    c = None if bias is None else scale * torch.einsum("hd,hdk->hk", bias, w2_h)
    return m, c


def fold_values(value: nn.Module, out: nn.Module, n_head: int):
    """N (H, kv, ko) and the per-head value-bias term b_v,h W_o1,hᵀ (H, ko) or None."""
    _, wv2, bv = factors(value)
    wo1, wo2, _ = factors(out)
    wo1 = wo2 if wo1 is None else wo1  # a dense out is (W, identity)
    d_k = wv2.shape[0] // n_head
    wo1_h = wo1.reshape(wo1.shape[0], n_head, d_k).permute(1, 2, 0)  # (H, d_k, ko)
    n = wv2.reshape(n_head, d_k, -1).transpose(1, 2) @ wo1_h
    c_o = None if bv is None else torch.einsum("hd,hdk->hk", bv.reshape(n_head, d_k), wo1_h)
    return n, c_o


def project_out(out: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The rest of the output projection after its folded input side."""
    wo1, wo2, bias = factors(out)
    if wo1 is not None:
        return F.linear(y, wo2, bias)
    return y if bias is None else y + bias


def attention_flops(query, key, value, out, n_head: int, frames: int, reduced: bool) -> int:
    """Multiply-add FLOPs (x2) of one self-attention over ``frames`` frames."""
    d = query.out_features
    if not reduced:
        weights = sum(w.numel() for p in (query, key, value, out) for w in factors(p)[:2] if w is not None)
        return 2 * frames * weights + 2 * 2 * frames * frames * d
    kq, kk, kv = rank_of(query), rank_of(key), rank_of(value)
    ko = out_rank(out) or d
    w1s = [factors(p)[0] for p in (query, key, value)]
    downs = sum(2 * frames * w1.numel() for w1 in w1s if w1 is not None)
    folded_queries = 2 * frames * kq * n_head * kk
    scores_and_values = 2 * n_head * frames * frames * (kk + kv)
    folded_values = 2 * frames * n_head * kv * ko
    out_up = 0 if out_rank(out) is None else 2 * frames * ko * d
    return downs + folded_queries + scores_and_values + folded_values + out_up


def reduced_is_cheaper(query, key, value, out, n_head: int, frames: int) -> bool:
    parts = (query, key, value, out, n_head, frames)
    return attention_flops(*parts, reduced=True) < attention_flops(*parts, reduced=False)


def check_heads(d: int, n_head: int) -> None:
    if d % n_head:
        raise ValueError(f"model width {d} is not divisible by {n_head} heads")

