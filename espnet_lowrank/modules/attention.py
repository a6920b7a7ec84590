"""Whisper's self-attention computed in the reduced (rank) dimension: the
Whisper adapter over the folding core (``modules/folding.py``), with the fast
paths that Whisper's 1500 frames pay for.

The folded path pays off when the ranks are small against the head width;
``attention_flops`` compares it with the plain path so callers can choose.
"""

import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from espnet_lowrank.modules.folding import (  # noqa: F401 (attention_flops is public here)
    attention_flops,
    check_heads,
    factors,
    fold_scores,
    fold_values,
    out_rank,
    project_out,
    rank_input,
    rank_of,
)

# How ReducedSelfAttention computes in eval mode without gradients:
# "flops": the path with fewer FLOPs (deterministic, the default);
# "reduced": always rank space; "measure": time the rank-space and the plain
# path once per (shapes, ranks, device, dtype, threads) and keep the faster
# (cached in-process, so runs may differ). Training and autograd always take
# the rank-space path.
DISPATCH_MODES = ("flops", "reduced", "measure")
# (dispatch key) -> "reduced" | "dense"; filled on first use in "measure" mode.
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
    plain path is taken instead where ``dispatch`` says it is cheaper.

    Args:
        query, key, value, out: ``nn.Linear`` or ``LowRankLinear`` (d -> d).
        n_head: number of heads; d must be divisible by it.
        dispatch: one of ``DISPATCH_MODES`` (a plain attribute; callers may
            change it, e.g. through ``set_attention_options_``).
    """

    def __init__(self, query: nn.Module, key: nn.Module, value: nn.Module, out: nn.Module, n_head: int,
                 dispatch: str = "flops"):
        super().__init__()
        check_heads(query.out_features, n_head)
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"unknown attention dispatch {dispatch!r}; expected one of {DISPATCH_MODES}")
        self.query, self.key, self.value, self.out = query, key, value, out
        self.n_head = n_head
        self.dispatch = dispatch
        self._cache_key = None
        self._cache = None

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

    def _attend(self, queries, k1, v1, key_padding_mask):
        """(b, h, t, kk) folded queries over shared keys (b, t, kk) and values (b, t, kv)."""
        b, h, t, kk = queries.shape
        # Keys and values are shared by the heads: stack the heads' queries
        # as rows of one single-head attention, (b, 1, h t, kk).
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].bool()
        z = F.scaled_dot_product_attention(
            queries.reshape(b, 1, h * t, kk), k1.unsqueeze(1), v1.unsqueeze(1), attn_mask=attn_mask, scale=1.0
        )
        return z.view(b, h, t, -1)

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
        queries = queries.view(b, t, h, kk).transpose(1, 2)  # (b, h, t, kk)
        z = self._attend(queries, k1, v1, key_padding_mask)  # (b, h, t, kv)
        z = z.transpose(1, 2).reshape(b, t, h * kv)
        y = z @ n_flat if c_o is None else torch.addmm(c_o, z.reshape(b * t, h * kv), n_flat).view(b, t, -1)
        return project_out(self.out, y)

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
        if self.training or torch.is_grad_enabled() or self.dispatch == "reduced":
            return "reduced"
        if self.dispatch == "flops":
            t = x.shape[1]
            reduced = attention_flops(self.query, self.key, self.value, self.out, self.n_head, t, reduced=True)
            dense = attention_flops(self.query, self.key, self.value, self.out, self.n_head, t, reduced=False)
            return "reduced" if reduced < dense else "dense"
        key = (
            tuple(x.shape), key_padding_mask is not None, self.n_head,
            tuple(rank_of(p) for p in (self.query, self.key, self.value)), out_rank(self.out),
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


class WhisperReducedAttention(ReducedSelfAttention):
    """Drop-in for whisper.model.MultiHeadAttention in encoder self-attention."""

    def forward(self, x, xa=None, mask=None, kv_cache=None):
        if xa is not None or mask is not None:
            raise ValueError("reduced attention serves encoder self-attention only")
        return super().forward(x), None


def set_attention_options_(module: nn.Module, dispatch: str) -> int:
    """Set ``dispatch`` on every ``ReducedSelfAttention`` under ``module``;
    returns how many were set."""
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"unknown attention dispatch {dispatch!r}; expected one of {DISPATCH_MODES}")
    count = 0
    for m in module.modules():
        if isinstance(m, ReducedSelfAttention):
            m.dispatch = dispatch
            count += 1
    return count
