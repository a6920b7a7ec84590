"""Self-attention computed in the reduced (rank) dimension.

With low-rank projections q = W_q2 Q1 + b_q (Q1 = W_q1 x), k = W_k2 K1 + b_k,
v = W_v2 V1 + b_v, the per-head scores are

    q_h k_hᵀ = (Q1 W_q2,hᵀ W_k2,h + b_q,h W_k2,h) K1ᵀ + (terms constant along keys)

and softmax ignores the constant terms, so the key bias disappears and the
queries meet the shared rank-space keys K1 through one folded matrix
M_h = W_q2,hᵀ W_k2,h. Since each softmax row sums to one, the values can stay
in rank space too: out = Σ_h (P_h V1) W_v2,hᵀ W_o,hᵀ + const, with
W_v2,hᵀ W_o,hᵀ folded into one projection per head. A projection left dense
is treated as the factor pair (identity, W).

The folded path pays off when the ranks are small against the head width;
``attention_flops`` compares it with the plain path so callers can choose.
"""

import os
import time
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from espnet_lowrank.modules.lowrank_linear import LowRankLinear


def _factors(proj: nn.Module) -> Tuple[Optional[nn.Module], torch.Tensor, Optional[torch.Tensor]]:
    """(down or None for identity, W2 (d_out, k), bias) of a projection."""
    if isinstance(proj, LowRankLinear):
        return proj.down, proj.up.weight, proj.up.bias
    if isinstance(proj, nn.Linear):
        return None, proj.weight, proj.bias
    raise TypeError(f"unsupported projection {type(proj).__name__}; expected nn.Linear or LowRankLinear")


def _rank(proj: nn.Module) -> int:
    return proj.rank if isinstance(proj, LowRankLinear) else proj.in_features


def _projection_flops(proj: nn.Module, frames: int) -> int:
    if isinstance(proj, LowRankLinear):
        return 2 * frames * proj.rank * (proj.in_features + proj.out_features)
    return 2 * frames * proj.in_features * proj.out_features


def attention_flops(query, key, value, out, n_head: int, frames: int, reduced: bool) -> int:
    """Multiply-add FLOPs (x2) of one self-attention over ``frames`` frames."""
    d = query.out_features
    if not reduced:
        projections = sum(_projection_flops(p, frames) for p in (query, key, value, out))
        return projections + 2 * 2 * frames * frames * d
    kq, kk, kv = _rank(query), _rank(key), _rank(value)
    ko = out.rank if isinstance(out, LowRankLinear) else d
    downs = sum(
        2 * frames * p.in_features * p.rank
        for p in (query, key, value)
        if isinstance(p, LowRankLinear)
    )
    folded_queries = 2 * frames * kq * n_head * kk
    scores_and_values = 2 * n_head * frames * frames * (kk + kv)
    folded_values = 2 * frames * n_head * kv * ko
    out_up = 2 * frames * ko * d if isinstance(out, LowRankLinear) else 0
    return downs + folded_queries + scores_and_values + folded_values + out_up


# How ReducedSelfAttention computes in eval mode without gradients:
# "measure": time the rank-space and the plain path once per (shapes, ranks,
# device, dtype, threads) and keep the faster (cached in-process);
# "flops": the path with fewer FLOPs (deterministic); "reduced": always rank
# space. Training and autograd always take the rank-space path.
DISPATCH_MODES = ("measure", "flops", "reduced")
DISPATCH = os.environ.get("ESPNET_LOWRANK_ATTENTION_DISPATCH", "measure")
# Opt-in Triton kernel for the rank-space softmax (modules/triton_attention.py):
# used on CUDA, or on CPU under TRITON_INTERPRET=1 (tests).
USE_TRITON = os.environ.get("ESPNET_LOWRANK_TRITON") == "1"
# (dispatch key) -> "reduced" | "dense"; filled on first use.
_DISPATCH_CACHE: Dict[tuple, str] = {}


def _time_ms(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


class ReducedSelfAttention(nn.Module):
    """Multi-head self-attention whose scores and values live in rank space.

    Holds the four projections under their original names, so the state-dict
    keys are those of the plain attention with low-rank projections.

    Speed: the three down-projections run as one GEMM; the shared rank-space
    keys serve all heads at once (the heads' queries are stacked as rows of a
    single-head SDPA, so keys and values are never expanded per head); in
    eval mode the folded matrices are cached until a weight changes; and the
    plain path is taken instead where it measures faster (``DISPATCH``).

    Args:
        query, key, value, out: ``nn.Linear`` or ``LowRankLinear`` (d -> d).
        n_head: number of heads; d must be divisible by it.
    """

    def __init__(self, query: nn.Module, key: nn.Module, value: nn.Module, out: nn.Module, n_head: int):
        super().__init__()
        d = query.out_features
        if d % n_head:
            raise ValueError(f"model width {d} is not divisible by {n_head} heads")
        self.query, self.key, self.value, self.out = query, key, value, out
        self.n_head = n_head
        self._cache_key = None
        self._cache = None

    def _folded(self, dtype: torch.dtype):
        """M (H, kq, kk), c (H, kk), N (H, kv, ko), c_o (ko,), scaled for softmax."""
        h = self.n_head
        _, wq2, bq = _factors(self.query)
        _, wk2, _ = _factors(self.key)  # the key bias is constant along keys
        _, wv2, bv = _factors(self.value)
        d = wq2.shape[0]
        dh = d // h
        scale = dh ** -0.5
        wq2_h = wq2.reshape(h, dh, -1)
        wk2_h = wk2.reshape(h, dh, -1)
        m = scale * wq2_h.transpose(1, 2) @ wk2_h
        c = scale * torch.einsum("hd,hdk->hk", bq.reshape(h, dh), wk2_h) if bq is not None else None
        wo1 = self.out.down.weight if isinstance(self.out, LowRankLinear) else self.out.weight
        wo1_h = wo1.reshape(wo1.shape[0], h, dh).permute(1, 2, 0)  # (H, dh, ko)
        n = wv2.reshape(h, dh, -1).transpose(1, 2) @ wo1_h
        c_o = torch.einsum("hd,hdk->k", bv.reshape(h, dh), wo1_h) if bv is not None else None
        return m.to(dtype), None if c is None else c.to(dtype), n.to(dtype), None if c_o is None else c_o.to(dtype)

    def _prepared(self, dtype: torch.dtype):
        """(W_down (kq+kk+kv, d) or None, split sizes, M', c', N', c_o) laid out
        for the fast forward; cached in eval mode without autograd, keyed on
        every parameter's identity, storage and in-place version."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = None
        if cacheable:
            key = (dtype,) + tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
            if key == self._cache_key:
                return self._cache
        m, c, n, c_o = self._folded(dtype)
        h, kq, kk = m.shape
        kv, ko = n.shape[1], n.shape[2]
        m_flat = m.permute(1, 0, 2).reshape(kq, h * kk)  # queries of all heads in one GEMM
        c_flat = None if c is None else c.reshape(h * kk)
        n_flat = n.reshape(h * kv, ko)
        downs = [p.down.weight if isinstance(p, LowRankLinear) else None for p in (self.query, self.key, self.value)]
        w_down = torch.cat(downs, 0).to(dtype) if all(w is not None for w in downs) else None
        prepared = (w_down, (kq, kk, kv), m_flat, c_flat, n_flat, c_o)
        if cacheable:
            self._cache_key, self._cache = key, prepared
        return prepared

    def _reduced_forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.n_head
        w_down, (kq, kk, kv), m_flat, c_flat, n_flat, c_o = self._prepared(x.dtype)
        if w_down is not None:
            q1, k1, v1 = F.linear(x, w_down).split((kq, kk, kv), dim=-1)
        else:
            q1 = self.query.down(x) if isinstance(self.query, LowRankLinear) else x
            k1 = self.key.down(x) if isinstance(self.key, LowRankLinear) else x
            v1 = self.value.down(x) if isinstance(self.value, LowRankLinear) else x
        queries = q1 @ m_flat  # (b, t, h kk)
        if c_flat is not None:
            queries = queries + c_flat
        queries = queries.view(b, t, h, kk).transpose(1, 2)  # (b, h, t, kk)
        if USE_TRITON and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
            from espnet_lowrank.modules.triton_attention import rank_space_attention

            mask = None if key_padding_mask is None else key_padding_mask.bool()
            z = rank_space_attention(queries, k1, v1, mask)  # (b, h, t, kv)
        else:
            # Keys and values are shared by the heads: stack the heads' queries
            # as rows of one single-head attention, (b, 1, h t, kk).
            queries = queries.reshape(b, 1, h * t, kk)
            attn_mask = None
            if key_padding_mask is not None:
                attn_mask = key_padding_mask[:, None, None, :].bool()
            z = F.scaled_dot_product_attention(
                queries, k1.unsqueeze(1), v1.unsqueeze(1), attn_mask=attn_mask, scale=1.0
            )  # (b, 1, h t, kv)
        z = z.view(b, h, t, kv).transpose(1, 2).reshape(b, t, h * kv)
        y = z @ n_flat if c_o is None else torch.addmm(c_o, z.reshape(b * t, h * kv), n_flat).view(b, t, -1)
        if isinstance(self.out, LowRankLinear):
            return self.out.up(y)
        return y + self.out.bias if self.out.bias is not None else y

    def _dense_forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The plain path: project, attend per head, project out."""
        b, t, d = x.shape
        h = self.n_head

        def heads(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = key_padding_mask[:, None, None, :].bool()
        z = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=attn_mask
        )
        return self.out(z.transpose(1, 2).reshape(b, t, d))

    def _path(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> str:
        if self.training or torch.is_grad_enabled() or DISPATCH == "reduced":
            return "reduced"
        if DISPATCH == "flops":
            t = x.shape[1]
            reduced = attention_flops(self.query, self.key, self.value, self.out, self.n_head, t, reduced=True)
            dense = attention_flops(self.query, self.key, self.value, self.out, self.n_head, t, reduced=False)
            return "reduced" if reduced < dense else "dense"
        key = (
            tuple(x.shape), key_padding_mask is not None, self.n_head,
            tuple(_rank(p) for p in (self.query, self.key, self.value)),
            _rank(self.out) if isinstance(self.out, LowRankLinear) else None,
            x.device.type, x.dtype, torch.get_num_threads(),
        )
        path = _DISPATCH_CACHE.get(key)
        if path is None:
            sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

            def timed(fn):
                def run():
                    fn(x, key_padding_mask)
                    sync()
                return _time_ms(run)

            reduced_ms = timed(self._reduced_forward)
            dense_ms = timed(self._dense_forward)
            path = "reduced" if reduced_ms <= dense_ms else "dense"
            _DISPATCH_CACHE[key] = path
        return path

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self-attention over x.

        Args:
            x: (#batch, T, d).
            key_padding_mask: (#batch, T) bool, True where a frame is valid.

        Returns:
            (#batch, T, d).
        """
        if self._path(x, key_padding_mask) == "dense":
            return self._dense_forward(x, key_padding_mask)
        return self._reduced_forward(x, key_padding_mask)

    def flops(self, frames: int) -> int:
        return attention_flops(self.query, self.key, self.value, self.out, self.n_head, frames, reduced=True)
