"""Two thin factors that stand in for one dense projection.

``LowRankLinear`` replaces ``nn.Linear``; ``LowRankConv1d`` replaces a 1x1
``nn.Conv1d`` (Conformer's pointwise convolutions). Both keep the children
``down`` (d_in -> rank, no bias) and ``up`` (rank -> d_out, with the bias), so
a layer ``...w_1`` becomes ``...w_1.down.weight`` / ``...w_1.up.weight`` /
``...w_1.up.bias`` in the state dict.
"""

from typing import Optional

import torch
from torch import nn


def _check_rank(rank: int, d_in: int, d_out: int) -> None:
    if not 0 < rank <= min(d_in, d_out):
        raise ValueError(f"rank {rank} must be in [1, min(d_in={d_in}, d_out={d_out})]")


def _from_factors(cls, w1: torch.Tensor, w2: torch.Tensor, bias: Optional[torch.Tensor]):
    """Build a ``cls`` from W1 (k, d_in), W2 (d_out, k) and b (d_out,) or None."""
    rank, d_in = w1.shape
    layer = cls(d_in, w2.shape[0], rank, bias=bias is not None)
    with torch.no_grad():
        layer.down.weight.copy_(w1.reshape_as(layer.down.weight))
        layer.up.weight.copy_(w2.reshape_as(layer.up.weight))
        if bias is not None:
            layer.up.bias.copy_(bias)
    return layer


class LowRankLinear(nn.Module):
    """y = up(down(x)) = W2 (W1 x) + b.

    Args:
        in_features: d_in.
        out_features: d_out.
        rank: k, the width of the bottleneck.
        bias: whether ``up`` carries a bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        _check_rank(rank, in_features, out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    from_factors = classmethod(_from_factors)

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def factors(self):
        """(W1 (k, d_in), W2 (d_out, k), bias or None), as rank-space attention folds them."""
        return self.down.weight, self.up.weight, self.up.bias

    def dense_weight(self) -> torch.Tensor:
        """W2 @ W1, shape (d_out, d_in)."""
        return self.up.weight @ self.down.weight

    def to_dense(self) -> nn.Linear:
        dense = nn.Linear(self.in_features, self.out_features, bias=self.up.bias is not None)
        dense = dense.to(device=self.up.weight.device, dtype=self.up.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.up.bias is not None:
                dense.bias.copy_(self.up.bias)
        return dense

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features}"


class LowRankConv1d(nn.Module):
    """A 1x1 ``Conv1d`` as two 1x1 convolutions; input and output are (B, C, T)."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, bias: bool = True):
        super().__init__()
        _check_rank(rank, in_channels, out_channels)
        self.in_features = in_channels
        self.out_features = out_channels
        self.rank = rank
        self.down = nn.Conv1d(in_channels, rank, kernel_size=1, bias=False)
        self.up = nn.Conv1d(rank, out_channels, kernel_size=1, bias=bias)

    from_factors = classmethod(_from_factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        return self.up.weight[..., 0] @ self.down.weight[..., 0]

    def to_dense(self) -> nn.Conv1d:
        dense = nn.Conv1d(self.in_features, self.out_features, 1, bias=self.up.bias is not None)
        dense = dense.to(device=self.up.weight.device, dtype=self.up.weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight().unsqueeze(-1))
            if self.up.bias is not None:
                dense.bias.copy_(self.up.bias)
        return dense

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features} (1x1 conv)"

