"""Whisper's encoder self-attention in the rank space: the Whisper adapter over the folding core
(``modules/folding.py``), with the fast paths that Whisper's 1500 frames pay for. The folded path pays
off when the ranks are small against the head width; ``attention_flops`` compares it with the plain one."""

import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from espnet_lowrank.modules.folding import (attention_flops, check_heads, factors, fold_scores, fold_values,
                                            out_rank, project_out, rank_input, rank_of)

# How ReducedSelfAttention computes in eval mode without gradients: "flops" takes the path with fewer
# FLOPs (deterministic, the default); "reduced" always rank space; "measure" times both paths once per
# (shapes, ranks, device, dtype, threads) and keeps the faster (cached in-process, so runs may differ).
# Training and autograd always take the rank-space path.
DISPATCH_MODES = ("flops", "reduced", "measure")
_DISPATCH_CACHE: Dict[tuple, str] = {}  # dispatch key -> "reduced" | "dense", filled in "measure" mode


def _check_dispatch(dispatch: str) -> None:
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"unknown attention dispatch {dispatch!r}; expected one of {DISPATCH_MODES}")


def _sdpa_mask(key_padding_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if key_padding_mask is None else key_padding_mask[:, None, None, :].bool()


def _time_ms(forward, x: torch.Tensor, key_padding_mask, repeats: int = 3) -> float:
    """Median time of ``repeats`` calls after one warm-up call."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        forward(x, key_padding_mask)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times[1:])[repeats // 2]


class ReducedSelfAttention(nn.Module):
    """Multi-head self-attention whose scores and values live in rank space.

    The projections (``nn.Linear`` or ``LowRankLinear``, d -> d) keep their names, so the state-dict keys
    are those of the plain attention. Speed: the three down-projections run as one GEMM; the heads'
    queries are the rows of one single-head SDPA over the shared rank-space keys (never expanded per
    head); eval mode caches the folded matrices until a weight changes; and the plain path is taken
    where ``dispatch`` (one of ``DISPATCH_MODES``, a plain attribute callers may change) says so.
    """

    def __init__(self, query: nn.Module, key: nn.Module, value: nn.Module, out: nn.Module, n_head: int,
                 dispatch: str = "flops"):
        super().__init__()
        check_heads(query.out_features, n_head)
        _check_dispatch(dispatch)
        self.query, self.key, self.value, self.out = query, key, value, out
        self.n_head = n_head
        self.dispatch = dispatch
        self._cache_key = None
        self._cache = None

    def _prepared(self, dtype: torch.dtype):
        """(W_down (kq+kk+kv, d) or None, split sizes, M', c', N', c_o) laid out for the fast forward;
        cached in eval mode without autograd, keyed on every parameter's identity, storage and version."""
        cacheable = not self.training and not torch.is_grad_enabled()
        key = None
        if cacheable:
            key = (dtype,) + tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
            if key == self._cache_key:
                return self._cache
        h = self.n_head
        m, c = fold_scores(self.query, self.key, h)  # the key bias is constant along keys
        n, c_o = fold_values(self.value, self.out, h)
        _, kq, kk = m.shape
        kv, ko = n.shape[1], n.shape[2]
        m_flat = m.permute(1, 0, 2).reshape(kq, h * kk).to(dtype)  # queries of all heads in one GEMM
        c_flat = None if c is None else c.reshape(h * kk).to(dtype)
        n_flat = n.reshape(h * kv, ko).to(dtype)
        # Softmax rows sum to one here (no fully masked query), so the value bias is one vector.
        c_o = None if c_o is None else c_o.sum(0).to(dtype)
        downs = [factors(p)[0] for p in (self.query, self.key, self.value)]
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
            q1, k1, v1 = (rank_input(p, x) for p in (self.query, self.key, self.value))
        queries = q1 @ m_flat  # (b, t, h kk)
        if c_flat is not None:
            queries = queries + c_flat
        # The heads share keys and values: their queries are the rows of one head, (b, 1, h t, kk).
        queries = queries.view(b, t, h, kk).transpose(1, 2).reshape(b, 1, h * t, kk)
        z = F.scaled_dot_product_attention(queries, k1.unsqueeze(1), v1.unsqueeze(1),
                                           attn_mask=_sdpa_mask(key_padding_mask), scale=1.0)
        z = z.view(b, h, t, kv).transpose(1, 2).reshape(b, t, h * kv)
        y = z @ n_flat if c_o is None else torch.addmm(c_o, z.reshape(b * t, h * kv), n_flat).view(b, t, -1)
        return project_out(self.out, y)

    def _dense_forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, t, d = x.shape
        heads = (p(x).view(b, t, self.n_head, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
        z = F.scaled_dot_product_attention(*heads, attn_mask=_sdpa_mask(key_padding_mask))
        return self.out(z.transpose(1, 2).reshape(b, t, d))

    def _path(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> str:
        if self.training or torch.is_grad_enabled() or self.dispatch == "reduced":
            return "reduced"
        if self.dispatch == "flops":
            parts = (self.query, self.key, self.value, self.out, self.n_head, x.shape[1])
            cheaper = attention_flops(*parts, reduced=True) < attention_flops(*parts, reduced=False)
            return "reduced" if cheaper else "dense"
        key = (
            tuple(x.shape), key_padding_mask is not None, self.n_head,
            tuple(rank_of(p) for p in (self.query, self.key, self.value)), out_rank(self.out),
            x.device.type, x.dtype, torch.get_num_threads(),
        )
        if key not in _DISPATCH_CACHE:
            reduced_ms = _time_ms(self._reduced_forward, x, key_padding_mask)
            dense_ms = _time_ms(self._dense_forward, x, key_padding_mask)
            _DISPATCH_CACHE[key] = "reduced" if reduced_ms <= dense_ms else "dense"
        return _DISPATCH_CACHE[key]

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (#batch, T, d) -> (#batch, T, d); key_padding_mask (#batch, T) bool, True where valid."""
        if self._path(x, key_padding_mask) == "dense":
            return self._dense_forward(x, key_padding_mask)
        return self._reduced_forward(x, key_padding_mask)


class WhisperReducedAttention(ReducedSelfAttention):
    """Drop-in for whisper.model.MultiHeadAttention in encoder self-attention."""

    def forward(self, x, xa=None, mask=None, kv_cache=None):
        if xa is not None or mask is not None:
            raise ValueError("reduced attention serves encoder self-attention only")
        return super().forward(x), None


def set_attention_options_(module: nn.Module, dispatch: str) -> int:
    """Set ``dispatch`` on every ``ReducedSelfAttention`` under ``module``; returns how many."""
    _check_dispatch(dispatch)
    reduced = [m for m in module.modules() if isinstance(m, ReducedSelfAttention)]
    for m in reduced:
        m.dispatch = dispatch
    return len(reduced)
