"""Incremental decoding for ``LocalWhisperDecoder``: a step runs only the newest token through the blocks,
with the prefix's self-attention keys/values cached and the encoder output's cross-attention ones computed
once per utterance; beam search carries them as each hypothesis' scorer state (:class:`HypState`)."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

KV = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class HypState:
    """One hypothesis' decoder state; tuples hold one entry per layer."""

    cross: Tuple[KV, ...]  # cross-attention (key, value), each (1, H, T, D / H), shared within an utterance
    tokens: Optional[torch.Tensor] = None  # (L,) the prefix of keys/values; None: not cached
    keys: Tuple[torch.Tensor, ...] = ()  # self-attention keys (H, L, D / H) of tokens
    values: Tuple[torch.Tensor, ...] = ()  # self-attention values (H, L, D / H) of tokens


def gather_cross(states: Sequence[Optional[HypState]]) -> Optional[List[KV]]:
    """The batched cross-attention (key, value) per layer: batch 1 when all hypotheses share one
    utterance's, else one row each; None when a state is missing."""
    if not states or any(not isinstance(s, HypState) for s in states):
        return None
    if all(s.cross is states[0].cross for s in states):
        return list(states[0].cross)
    return [(torch.cat([s.cross[i][0] for s in states]), torch.cat([s.cross[i][1] for s in states]))
            for i in range(len(states[0].cross))]


def gather_past(states: Sequence[HypState], ys: torch.Tensor) -> Optional[List[KV]]:
    """The batched self-attention cache, (n, H, L - 1, D / H) per layer, when every state holds exactly
    the prefix ``ys[:, :-1]``; else None."""
    if any(s.tokens is None or s.tokens.size(0) != ys.size(1) - 1 for s in states):
        return None
    if not torch.equal(torch.stack([s.tokens for s in states]).to(ys.device), ys[:, :-1]):
        return None
    return [(torch.stack([s.keys[i] for s in states]), torch.stack([s.values[i] for s in states]))
            for i in range(len(states[0].keys))]


def scatter(cross: List[KV], past: Optional[List[KV]], ys: torch.Tensor) -> List[HypState]:
    """Per-hypothesis states: ``cross`` of batch 1 or n, ``past`` (n, H, L, D / H) per layer of the prefixes
    ``ys`` (n, L) or None (not cached)."""
    n = ys.size(0)
    if cross[0][0].size(0) == 1:
        per_hyp = [tuple(cross)] * n
    else:
        per_hyp = [tuple((k[j : j + 1], v[j : j + 1]) for k, v in cross) for j in range(n)]
    if past is None:
        return [HypState(c) for c in per_hyp]
    return [
        HypState(per_hyp[j], ys[j], tuple(k[j] for k, _ in past), tuple(v[j] for _, v in past))
        for j in range(n)
    ]


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(n, L, D) -> (n, n_head, L, D / n_head), contiguous (attention reads it as is)."""
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2).contiguous()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Whisper's SDPA attention: q (n, H, l, d), k/v (n or 1, H, T, d) -> (n, l, H * d)."""
    n, _, l, _ = q.shape
    if k.size(0) == 1 and n > 1 and l == 1:
        # every hypothesis reads the same encoder output: one attention with n queries
        out = F.scaled_dot_product_attention(q.transpose(0, 2), k, v).transpose(0, 2)
    else:
        out = F.scaled_dot_product_attention(q, k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1),
                                             is_causal=causal)
    return out.transpose(1, 2).reshape(n, l, -1)


def run_blocks(blocks: Sequence[torch.nn.Module], x: torch.Tensor, cross: List[KV],
               past: Optional[List[KV]] = None) -> Tuple[torch.Tensor, List[KV]]:
    """Whisper's ``ResidualAttentionBlock`` stack on embedded tokens ``x`` (n, l, D) -> (n, l, D) and the
    self-attention cache (n, H, P + l, D / H) per layer. ``cross``: (n or 1, H, T, D / H) per layer;
    ``past``: (n, H, P, D / H) per layer of the P positions before ``x`` (then l = 1), None: P = 0."""
    if past is not None and x.size(1) != 1:
        raise ValueError(f"a cached step takes one position per hypothesis, got {x.size(1)}")
    new_past = []
    for i, block in enumerate(blocks):
        attn, heads = block.attn, block.attn.n_head
        h = block.attn_ln(x)
        q, k, v = (split_heads(f(h), heads) for f in (attn.query, attn.key, attn.value))
        if past is not None:
            k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
        new_past.append((k, v))
        x = x + attn.out(_attend(q, k, v, causal=past is None and x.size(1) > 1))
        h = block.cross_attn_ln(x)
        q = split_heads(block.cross_attn.query(h), heads)
        x = x + block.cross_attn.out(_attend(q, *cross[i]))
        x = x + block.mlp(block.mlp_ln(x))
    return x, new_past


class TransposedVocabulary:
    """A contiguous (D, n_vocab) copy of the tied embedding, rebuilt when the weight changes: ``x @ copy``
    reads it at memory speed, ``x @ weight.t()`` about half as fast on CPU (costs n_vocab * D floats)."""

    def __init__(self):
        self._key, self._copy = None, None

    def __call__(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.device, dtype)
        if key != self._key:
            self._copy = None  # free the old copy first
            self._copy = weight.detach().to(dtype).t().contiguous()
            self._key = key
        return self._copy
