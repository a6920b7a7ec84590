"""ESPnet encoder self-attention in the rank space: drop-ins for ``MultiHeadedAttention`` and the
relative-position variants ("rel_selfattn", "legacy_rel_selfattn") over the folding core
(``modules/folding.py``); the projections keep their ESPnet names, so the state-dict keys do too.

Position scores (q_h + v_h) p_hᵀ with p = W_p2 P1 + b_p fold like the content scores, but the position
bias term (q_h + v_h)·b_p,h is *not* dropped: rel_shift mixes neighbouring rows (and the legacy shift pads
zeros), so it is added exactly, as a per-query scalar, before the shift. The value bias is kept times
rowsum(P_h), which is 1 except for fully masked rows or under dropout.
"""

from typing import Optional

import torch
from torch import nn

from espnet_lowrank.modules.folding import check_heads, factors, fold_scores, fold_values, project_out
from espnet_lowrank.modules.folding import rank_input as _down


def _check_self_attention(query, key, value) -> None:
    if not (query is key and key is value):
        raise ValueError("reduced attention serves self-attention only: query, key and value must be "
                         "the same tensor (cross-attention or cached decoding is not supported)")


class ReducedMultiHeadedAttention(nn.Module):
    """Drop-in for ESPnet's ``MultiHeadedAttention`` in encoder self-attention;
    the projections are ``nn.Linear`` or ``LowRankLinear`` (d -> d)."""

    def __init__(self, linear_q, linear_k, linear_v, linear_out, n_head: int, dropout_rate: float = 0.0):
        super().__init__()
        d = linear_q.out_features
        check_heads(d, n_head)
        self.linear_q, self.linear_k = linear_q, linear_k
        self.linear_v, self.linear_out = linear_v, linear_out
        self.h = n_head
        self.d_k = d // n_head
        self.dropout = nn.Dropout(p=dropout_rate)
        self.dropout_rate = dropout_rate
        self.attn = None  # the last attention weights, as the dense module keeps them

    @classmethod
    def from_dense(cls, attn: nn.Module) -> "ReducedMultiHeadedAttention":
        _check_plain(attn)
        return cls(attn.linear_q, attn.linear_k, attn.linear_v, attn.linear_out, attn.h,
                   getattr(attn, "dropout_rate", 0.0))

    def _content_scores(self, q1: torch.Tensor, k1: torch.Tensor, extra_bias=None) -> torch.Tensor:
        """(B, H, T, T) scaled content scores from Q1 (B, T, kq), K1 (B, T, kk)."""
        m, c = fold_scores(self.linear_q, self.linear_k, self.h, extra_bias)
        return self._folded_queries(q1, m, c) @ k1.unsqueeze(1).transpose(-1, -2)

    @staticmethod
    def _folded_queries(q1: torch.Tensor, m: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, H, T, kp) from Q1 (B, T, kq), M (H, kq, kp), c (H, kp) or None."""
        queries = torch.einsum("btq,hqk->bhtk", q1, m.to(q1.dtype))
        return queries if c is None else queries + c.to(q1.dtype)[None, :, None, :]

    def _attend(self, scores: torch.Tensor, v1: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """ESPnet's forward_attention with the values left in rank space: scores (B, H, T1, T2),
        v1 (B, T2, kv), mask (B, 1 or T1, T2) non-zero where valid, or None -> (B, T1, d)."""
        if mask is not None:
            mask = mask.unsqueeze(1).eq(0)
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
            self.attn = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
        else:
            self.attn = torch.softmax(scores, dim=-1)
        p_attn = self.dropout(self.attn)
        z = p_attn @ v1.unsqueeze(1)  # (B, H, T1, kv)
        n, c_o = fold_values(self.linear_v, self.linear_out, self.h)
        y = torch.einsum("bhtv,hvo->bto", z, n.to(z.dtype))
        if c_o is not None:
            y = y + torch.einsum("bht,ho->bto", p_attn.sum(-1), c_o.to(z.dtype))
        return project_out(self.linear_out, y)

    def forward(self, query, key, value, mask, expand_kv: bool = False):
        """Self-attention over ``query`` (B, T, d), which must also be key and value."""
        _check_self_attention(query, key, value)
        if expand_kv:
            raise ValueError("reduced attention does not support expand_kv (decoder-only option)")
        x = query
        scores = self._content_scores(_down(self.linear_q, x), _down(self.linear_k, x))
        return self._attend(scores, _down(self.linear_v, x), mask)


class ReducedRelPositionAttention(ReducedMultiHeadedAttention):
    """Drop-in for ESPnet's ``RelPositionMultiHeadedAttention`` (``legacy=False``) or
    ``LegacyRelPositionMultiHeadedAttention`` (``legacy=True``). ``linear_pos`` is bias-free when dense
    but has a bias once factored (b′ of the PCA swap), which is kept exactly."""

    def __init__(self, linear_q, linear_k, linear_v, linear_out, linear_pos,
                 pos_bias_u: nn.Parameter, pos_bias_v: nn.Parameter, n_head: int,
                 dropout_rate: float = 0.0, zero_triu: bool = False, legacy: bool = False):
        super().__init__(linear_q, linear_k, linear_v, linear_out, n_head, dropout_rate)
        self.linear_pos = linear_pos
        self.pos_bias_u = pos_bias_u
        self.pos_bias_v = pos_bias_v
        self.zero_triu = zero_triu
        self.legacy = legacy

    @classmethod
    def from_dense(cls, attn: nn.Module, legacy: bool = False) -> "ReducedRelPositionAttention":
        _check_plain(attn)
        return cls(attn.linear_q, attn.linear_k, attn.linear_v, attn.linear_out, attn.linear_pos,
                   attn.pos_bias_u, attn.pos_bias_v, attn.h, getattr(attn, "dropout_rate", 0.0),
                   attn.zero_triu, legacy=legacy)

    def rel_shift(self, x: torch.Tensor) -> torch.Tensor:
        """ESPnet's rel_shift of (B, H, T1, T2) position scores: the latest (T2 = 2*T1-1 -> T1) or the
        legacy one (T2 = T1)."""
        zero_pad = torch.zeros((*x.size()[:3], 1), device=x.device, dtype=x.dtype)
        x_padded = torch.cat([zero_pad, x], dim=-1).view(*x.size()[:2], x.size(3) + 1, x.size(2))
        x = x_padded[:, :, 1:].view_as(x)
        if not self.legacy:
            x = x[:, :, :, : x.size(-1) // 2 + 1]
        if self.zero_triu:
            # The legacy dense code builds this on the CPU; same values, any device here.
            ones = torch.ones((x.size(2), x.size(3)), device=x.device, dtype=x.dtype)
            x = x * torch.tril(ones, x.size(3) - x.size(2))[None, None, :, :]
        return x

    def _position_scores(self, q1: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """(B, H, T1, Tp) scaled position scores before rel_shift; pos_emb (1 or B, Tp, d)."""
        dtype = q1.dtype
        m, c = fold_scores(self.linear_q, self.linear_pos, self.h, self.pos_bias_v)
        p1 = _down(self.linear_pos, pos_emb)  # (Bp, Tp, kp)
        scores = self._folded_queries(q1, m, c) @ p1.unsqueeze(1).transpose(-1, -2)
        _, _, bp = factors(self.linear_pos)
        if bp is not None:
            # (q_h + v_h)·b_p,h: constant along positions but not after rel_shift.
            _, wq2, bq = factors(self.linear_q)
            scale = self.d_k ** -0.5
            wq2_h = wq2.reshape(self.h, self.d_k, -1)
            qv_bias = self.pos_bias_v if bq is None else bq.reshape(self.h, self.d_k) + self.pos_bias_v
            bp_h = bp.reshape(self.h, self.d_k)
            g = scale * torch.einsum("hdq,hd->hq", wq2_h, bp_h)
            s = scale * (qv_bias * bp_h).sum(-1)
            per_query = torch.einsum("btq,hq->bht", q1, g.to(dtype)) + s.to(dtype)[None, :, None]
            scores = scores + per_query[..., None]
        return scores

    def forward(self, query, key, value, pos_emb, mask):
        """Self-attention with relative positions; pos_emb (1 or B, 2*T-1 or T (legacy), d)."""
        _check_self_attention(query, key, value)
        x = query
        q1 = _down(self.linear_q, x)
        scores = self._content_scores(q1, _down(self.linear_k, x), extra_bias=self.pos_bias_u)
        scores = scores + self.rel_shift(self._position_scores(q1, pos_emb))
        return self._attend(scores, _down(self.linear_v, x), mask)


def _check_plain(attn: nn.Module) -> None:
    """Reject dense options the rank-space form does not reproduce."""
    for norm in ("q_norm", "k_norm"):
        if not isinstance(getattr(attn, norm, nn.Identity()), nn.Identity):
            raise ValueError("reduced attention cannot fold qk_norm (a LayerNorm between the "
                             "projection and the scores); keep this attention dense")
