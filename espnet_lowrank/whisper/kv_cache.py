"""Incremental decoding for :class:`~espnet_lowrank.whisper.espnet_whisper.LocalWhisperDecoder`.

A decoding step runs only the newest token through the decoder blocks: the
self-attention keys and values of the earlier tokens come from a per-layer
cache, and the cross-attention keys and values of the encoder output are
computed once per utterance. Beam search carries the cache as each
hypothesis' scorer state (:class:`HypState`), which ESPnet's ``BeamSearch``
/ ``BatchBeamSearch`` select and reorder as any other state.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

KV = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class HypState:
    """One hypothesis' decoder state.

    Attributes:
        cross: per layer, the cross-attention (key, value) of the encoder
            output, each (1, T, D); hypotheses of one utterance share the
            same tuple.
        tokens: (L,) the prefix that ``keys``/``values`` were computed from,
            or None when they are not cached.
        keys: per layer, the self-attention keys (L, D) of ``tokens``.
        values: per layer, the self-attention values (L, D) of ``tokens``.
    """

    cross: Tuple[KV, ...]
    tokens: Optional[torch.Tensor] = None
    keys: Tuple[torch.Tensor, ...] = ()
    values: Tuple[torch.Tensor, ...] = ()


def gather_cross(states: Sequence[Optional[HypState]]) -> Optional[List[KV]]:
    """The batched cross-attention (key, value) per layer of ``states``: batch 1
    when all hypotheses share one utterance's, else one row per hypothesis;
    None when a state is missing."""
    if not states or any(not isinstance(s, HypState) for s in states):
        return None
    if all(s.cross is states[0].cross for s in states):
        return list(states[0].cross)
    return [(torch.cat([s.cross[i][0] for s in states]), torch.cat([s.cross[i][1] for s in states]))
            for i in range(len(states[0].cross))]


def gather_past(states: Sequence[HypState], ys: torch.Tensor) -> Optional[List[KV]]:
    """The batched self-attention cache per layer, (n, L - 1, D) each, when every
    state holds exactly the prefix ``ys[:, :-1]`` (n, L); None otherwise."""
    if any(s.tokens is None or s.tokens.size(0) != ys.size(1) - 1 for s in states):
        return None
    if not torch.equal(torch.stack([s.tokens for s in states]).to(ys.device), ys[:, :-1]):
        return None
    return [(torch.stack([s.keys[i] for s in states]), torch.stack([s.values[i] for s in states]))
            for i in range(len(states[0].keys))]


def scatter(cross: List[KV], past: Optional[List[KV]], ys: torch.Tensor) -> List[HypState]:
    """Per-hypothesis states of a batch: ``cross`` of batch 1 or n, ``past``
    (n, L, D) per layer for the prefixes ``ys`` (n, L), or None (not cached)."""
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


def _cross_attention(attn: torch.nn.Module, q: torch.Tensor, kv: KV) -> torch.Tensor:
    k, v = kv
    n, l, d = q.shape
    if k.size(0) == 1 and n > 1:
        # every hypothesis reads the same encoder output: one attention with n * l queries
        return attn.qkv_attention(q.reshape(1, n * l, d), k, v)[0].reshape(n, l, -1)
    return attn.qkv_attention(q, k.expand(n, -1, -1), v.expand(n, -1, -1))[0]


def run_blocks(
    blocks: Sequence[torch.nn.Module],
    x: torch.Tensor,
    mask: torch.Tensor,
    cross: List[KV],
    past: Optional[List[KV]] = None,
) -> Tuple[torch.Tensor, List[KV]]:
    """Whisper's ``ResidualAttentionBlock`` stack on new positions.

    Args:
        blocks: the decoder's blocks.
        x: (n, l, D) embedded tokens (position embedding added).
        mask: the decoder's causal mask, used when ``past`` is None and l > 1.
        cross: per layer, cross-attention (key, value) of batch n or 1.
        past: per layer, self-attention (key, value) (n, P, D) of the P
            positions before ``x``; then l must be 1.

    Returns:
        The blocks' output (n, l, D) and the self-attention cache (n, P + l, D)
        per layer.
    """
    if past is not None and x.size(1) != 1:
        raise ValueError(f"a cached step takes one position per hypothesis, got {x.size(1)}")
    new_past = []
    for i, block in enumerate(blocks):
        attn = block.attn
        h = block.attn_ln(x)
        q, k, v = attn.query(h), attn.key(h), attn.value(h)
        if past is not None:
            k, v = torch.cat([past[i][0], k], dim=1), torch.cat([past[i][1], v], dim=1)
        new_past.append((k, v))
        x = x + attn.out(attn.qkv_attention(q, k, v, mask if past is None and x.size(1) > 1 else None)[0])
        h = block.cross_attn_ln(x)
        x = x + block.cross_attn.out(_cross_attention(block.cross_attn, block.cross_attn.query(h), cross[i]))
        x = x + block.mlp(block.mlp_ln(x))
    return x, new_past
