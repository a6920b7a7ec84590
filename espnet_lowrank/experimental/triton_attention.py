"""A Triton kernel for rank-space attention (optional; GPU, or CPU under
``TRITON_INTERPRET=1`` for testing).

Computes, for every batch b, head h and query frame t,

    Z[b, h, t] = softmax_s(Q[b, h, t] · K1[b, s] over valid s) @ V1[b]

with queries already folded into the key rank space (``q1 M_h + c_h``,
softmax scale included), the rank-space keys K1 (B, T, kk) and values V1
(B, T, kv) shared by all heads — read once per block, never expanded per
head — and an optional key-padding mask. The values stay in rank space
through the loop; the caller projects Z once afterwards with the folded
``N_h = W_v2,hᵀ W_o,hᵀ`` (one GEMM over all heads). Any rank works; ranks
that are multiples of 16 waste no lanes (block widths are powers of two).

Experimental, off by default (never timed: no GPU was available to measure it
against SDPA). ``ReducedSelfAttention(use_triton=True)`` uses it on CUDA
tensors (and on CPU under ``TRITON_INTERPRET=1``, for tests), and only where
no gradient is needed: the kernel has no backward. The fp32 dots ask for full
IEEE precision (Triton's default is TF32 on NVIDIA GPUs).
"""

import os
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA torch wheels
    triton = None
    tl = None


# key loop bound granularity (frames); a multiple of every block_n used
LOOP_BUCKET = 256


def available() -> bool:
    return triton is not None


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device here."""
    return available() and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _rank_space_attention_kernel(
        Q, K, V, MASK, Z,
        T, KK, KV, H,
        stride_qb, stride_qh, stride_qt,
        stride_kb, stride_kt,
        stride_vb, stride_vt,
        stride_mb,
        stride_zb, stride_zh, stride_zt,
        HAS_MASK: tl.constexpr,
        T_LOOP: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BK)
        offs_v = tl.arange(0, BV)
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_k[None, :]
        q = tl.load(q_ptrs, mask=(offs_m[:, None] < T) & (offs_k[None, :] < KK), other=0.0)

        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BV), dtype=tl.float32)
        # The loop bound is a compile-time constant (T rounded up; blocks past
        # T are fully masked): the CPU interpreter cannot loop to a runtime
        # scalar under numpy 2, and rounding keeps the number of compiled
        # variants small on GPU.
        for start in range(0, T_LOOP, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            in_range = offs_n < T
            k = tl.load(
                K + b * stride_kb + offs_n[:, None] * stride_kt + offs_k[None, :],
                mask=in_range[:, None] & (offs_k[None, :] < KK), other=0.0,
            )
            # "ieee": fp32 dots would default to TF32 on NVIDIA (10-bit mantissa).
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            valid = in_range
            if HAS_MASK:
                keep = tl.load(MASK + b * stride_mb + offs_n, mask=in_range, other=0)
                valid = valid & (keep != 0)
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                V + b * stride_vb + offs_n[:, None] * stride_vt + offs_v[None, :],
                mask=in_range[:, None] & (offs_v[None, :] < KV), other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m_i = m_new
        l_i = tl.where(l_i == 0.0, 1.0, l_i)  # a query with no valid key gives zeros
        acc = acc / l_i[:, None]
        z_ptrs = Z + b * stride_zb + h * stride_zh + offs_m[:, None] * stride_zt + offs_v[None, :]
        tl.store(z_ptrs, acc.to(Z.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_v[None, :] < KV))


def rank_space_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """Attention of per-head rank-space queries over shared keys/values.

    Args:
        queries: (B, H, T, kk), folded and scaled.
        keys: (B, T, kk), shared by the heads.
        values: (B, T, kv), shared by the heads.
        key_padding_mask: (B, T) bool, True where a key frame is valid.

    Returns:
        (B, H, T, kv) in the queries' dtype.
    """
    if triton is None:
        raise RuntimeError("triton is not installed")
    if LOOP_BUCKET % block_n:
        raise ValueError(f"block_n={block_n} must divide {LOOP_BUCKET}")
    b, h, t, kk = queries.shape
    kv = values.shape[-1]
    if keys.shape != (b, t, kk) or values.shape[:2] != (b, t):
        raise ValueError(f"shapes do not match: queries {tuple(queries.shape)}, keys "
                         f"{tuple(keys.shape)}, values {tuple(values.shape)}")
    queries = queries.contiguous()
    keys = keys.contiguous()
    values = values.contiguous()
    z = torch.empty(b, h, t, kv, dtype=queries.dtype, device=queries.device)
    if key_padding_mask is not None:
        mask = key_padding_mask.to(torch.int8).contiguous()
        stride_mb = mask.stride(0)
    else:
        mask = queries  # unused
        stride_mb = 0
    bk = max(16, triton.next_power_of_2(kk))
    bv = max(16, triton.next_power_of_2(kv))
    grid = (triton.cdiv(t, block_m), b * h)
    _rank_space_attention_kernel[grid](
        queries, keys, values, mask, z,
        t, kk, kv, h,
        queries.stride(0), queries.stride(1), queries.stride(2),
        keys.stride(0), keys.stride(1),
        values.stride(0), values.stride(1),
        stride_mb,
        z.stride(0), z.stride(1), z.stride(2),
        HAS_MASK=key_padding_mask is not None,
        T_LOOP=triton.cdiv(t, LOOP_BUCKET) * LOOP_BUCKET,
        BLOCK_M=block_m, BLOCK_N=block_n, BK=bk, BV=bv,
    )
    return z
