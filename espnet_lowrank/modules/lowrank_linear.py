"""Two thin factors that stand in for one dense projection.

``LowRankLinear`` replaces ``nn.Linear``, ``LowRankConv1d`` a 1x1 ``nn.Conv1d`` (Conformer's pointwise
convolutions). Both keep the children ``down`` (d_in -> rank, no bias) and ``up`` (rank -> d_out, with the
bias), so a layer ``...w_1`` becomes ``...w_1.down.weight`` / ``...w_1.up.weight`` / ``...w_1.up.bias``.
"""

import functools
from typing import Optional

import torch
from torch import nn


class _TwoFactors(nn.Module):
    """y = up(down(x)) = W2 (W1 x) + b; ``_layer`` builds ``down`` and ``up``."""

    _layer = nn.Linear

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ValueError(f"rank {rank} must be in [1, min(d_in={in_features}, d_out={out_features})]")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.down = self._layer(in_features, rank, bias=False)
        self.up = self._layer(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, w1: torch.Tensor, w2: torch.Tensor, bias: Optional[torch.Tensor]):
        """Build from W1 (k, d_in), W2 (d_out, k) and b (d_out,) or None."""
        rank, d_in = w1.shape
        layer = cls(d_in, w2.shape[0], rank, bias=bias is not None)
        with torch.no_grad():
            layer.down.weight.copy_(w1.reshape_as(layer.down.weight))
            layer.up.weight.copy_(w2.reshape_as(layer.up.weight))
            if bias is not None:
                layer.up.bias.copy_(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        """W2 @ W1, shape (d_out, d_in)."""
        return self.up.weight.flatten(1) @ self.down.weight.flatten(1)

    def to_dense(self) -> nn.Module:
        dense = self._layer(self.in_features, self.out_features, bias=self.up.bias is not None)
        dense = dense.to(device=self.up.weight.device, dtype=self.up.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight().reshape_as(dense.weight))
            if self.up.bias is not None:
                dense.bias.copy_(self.up.bias)
        return dense

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features}"


class LowRankLinear(_TwoFactors):
    """Drop-in for ``nn.Linear``."""

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.up.bias

    def factors(self):
        """(W1 (k, d_in), W2 (d_out, k), bias or None), as rank-space attention folds them."""
        return self.down.weight, self.up.weight, self.up.bias


class LowRankConv1d(_TwoFactors):
    """A 1x1 ``Conv1d`` as two 1x1 convolutions; input and output are (B, C, T)."""

    _layer = functools.partial(nn.Conv1d, kernel_size=1)

    def __init__(self, in_channels: int, out_channels: int, rank: int, bias: bool = True):
        super().__init__(in_channels, out_channels, rank, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + " (1x1 conv)"
