"""Elastic ranks: one artifact, every operating point (experimental: no
measured benefit yet, see ``espnet_lowrank/experimental/__init__.py``).

With ``elastic: true`` each planned layer is stored with its *full* ordered
PCA basis, i.e. the factors at full rank r = min(d_in, d_out)

    down.weight = V_rᵀ W      (r, d_in)
    up.weight   = V_r         (d_out, r)

plus two buffers, the output mean ``mean`` = μ and the coefficients
``coef`` = V_rᵀ (b − μ), so that the rank-k bias is b′_k = μ + V[:, :k] c[:k].
Because the basis is ordered by explained variance, the rank-k factorization
is the leading slice of the full one — exactly what compressing at rank k
directly gives (``factorize.factor_weights``).

The rank is chosen at load time: the module is built at the rank of the
config's ``plan`` and a load-state-dict pre-hook truncates the full tensors of
the checkpoint to it. ``state_dict()`` always writes the full basis back, so
the key set and the shapes never depend on the chosen rank, the strict key
check passes for any plan, and a loaded model saves the same artifact again.
To move the operating point, edit the ranks in config.yaml and reload.

Only the planned layers are elastic; a layer the plan leaves dense stays
dense (its rank can't be changed in the artifact).
"""

from typing import Dict, Optional

import torch
from torch import nn

from espnet_lowrank.handlers import lowrank_class_for, weight_and_bias
from espnet_lowrank.modules.lowrank_linear import LowRankConv1d, LowRankLinear

_PARTS = ("down.weight", "up.weight", "up.bias")


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    return t[..., 0] if t.dim() == 3 else t


class _ElasticMixin:
    """Full basis kept off the module's parameters; the parameters hold the
    rank-k slice."""

    def _init_elastic(self, full_rank: int, conv: bool) -> None:
        d_in, d_out = self.in_features, self.out_features
        if not 0 < self.rank <= full_rank <= min(d_in, d_out):
            raise ValueError(f"rank {self.rank} / full rank {full_rank} out of range for {d_out}x{d_in}")
        self.full_rank = full_rank
        tail = (1,) if conv else ()
        ref = self.up.weight
        # The full basis; plain tensors, so deepcopy/to() see them through _apply.
        self._full_down = torch.zeros((full_rank, d_in) + tail, dtype=ref.dtype, device=ref.device)
        self._full_up = torch.zeros((d_out, full_rank) + tail, dtype=ref.dtype, device=ref.device)
        self.register_buffer("mean", torch.zeros(d_out, dtype=ref.dtype, device=ref.device))
        self.register_buffer("coef", torch.zeros(full_rank, dtype=ref.dtype, device=ref.device))
        self._register_state_dict_hook(_save_full)
        self._register_load_state_dict_pre_hook(_load_full, with_module=True)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._full_down = fn(self._full_down)
        self._full_up = fn(self._full_up)
        return out

    def full_bias(self) -> torch.Tensor:
        return self.mean + _as_2d(self._full_up) @ self.coef

    @torch.no_grad()
    def set_full_basis(self, down: torch.Tensor, up: torch.Tensor, mean: torch.Tensor, coef: torch.Tensor) -> None:
        """Store the full basis (2-D, or 3-D for convs) and load the current rank's slice."""
        self._full_down = down.detach().to(self._full_down).reshape(self._full_down.shape).clone()
        self._full_up = up.detach().to(self._full_up).reshape(self._full_up.shape).clone()
        self.mean.copy_(mean)
        self.coef.copy_(coef)
        self._truncate()

    @torch.no_grad()
    def _truncate(self) -> None:
        k = self.rank
        self.down.weight.copy_(self._full_down[:k])
        self.up.weight.copy_(self._full_up[:, :k])
        self.up.bias.copy_(self.mean + _as_2d(self._full_up)[:, :k] @ self.coef[:k])

    def extra_repr(self) -> str:
        return super().extra_repr() + f" (elastic, full rank {self.full_rank})"


def _save_full(module, state_dict, prefix, local_metadata):
    state_dict[prefix + "down.weight"] = module._full_down
    state_dict[prefix + "up.weight"] = module._full_up
    state_dict[prefix + "up.bias"] = module.full_bias()
    return state_dict


def _load_full(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    keys = [prefix + p for p in ("down.weight", "up.weight")]
    if not all(k in state_dict for k in keys):
        return  # the child loaders report the missing keys
    down, up = (state_dict[k] for k in keys)
    if down.shape != module._full_down.shape or up.shape != module._full_up.shape:
        error_msgs.append(
            f"{prefix}: elastic basis of shape {tuple(down.shape)}/{tuple(up.shape)}, expected "
            f"{tuple(module._full_down.shape)}/{tuple(module._full_up.shape)}"
        )
        return
    k = module.rank
    with torch.no_grad():
        module._full_down = down.detach().to(module._full_down).clone()
        module._full_up = up.detach().to(module._full_up).clone()
        mean = state_dict.get(prefix + "mean", module.mean)
        coef = state_dict.get(prefix + "coef", module.coef)
        # The children load the rank-k slice; this hook runs before them.
        state_dict[prefix + "down.weight"] = down[:k]
        state_dict[prefix + "up.weight"] = up[:, :k]
        state_dict[prefix + "up.bias"] = mean.to(up) + _as_2d(up)[:, :k] @ coef.to(up)[:k]


class ElasticLowRankLinear(_ElasticMixin, LowRankLinear):
    def __init__(self, in_features: int, out_features: int, rank: int, full_rank: Optional[int] = None):
        super().__init__(in_features, out_features, rank, bias=True)
        self._init_elastic(full_rank or min(in_features, out_features), conv=False)


class ElasticLowRankConv1d(_ElasticMixin, LowRankConv1d):
    def __init__(self, in_channels: int, out_channels: int, rank: int, full_rank: Optional[int] = None):
        super().__init__(in_channels, out_channels, rank, bias=True)
        self._init_elastic(full_rank or min(in_channels, out_channels), conv=True)


ELASTIC_TYPES = (ElasticLowRankLinear, ElasticLowRankConv1d)
# low-rank class (from the handler registry) -> its elastic form
_ELASTIC = {LowRankLinear: ElasticLowRankLinear, LowRankConv1d: ElasticLowRankConv1d}


def elastic_class_for(layer: nn.Module):
    return _ELASTIC[lowrank_class_for(layer)]


def build_elastic_layers_(encoder: nn.Module, ranks: Dict[str, int]) -> None:
    """Like ``apply.build_lowrank_layers_``, with elastic layers (weights come
    later from a state dict holding the full basis)."""
    from espnet_lowrank.apply import _planned_layer, set_submodule

    for name, rank in ranks.items():
        layer = _planned_layer(encoder, name, rank)
        w, _ = weight_and_bias(layer)
        new = elastic_class_for(layer)(w.shape[1], w.shape[0], int(rank))
        set_submodule(encoder, name, new.to(device=w.device, dtype=w.dtype))


@torch.no_grad()
def factorize_elastic_(encoder: nn.Module, ranks: Dict[str, int], spectra) -> None:
    """Replace each planned dense layer by an elastic layer holding its full
    PCA basis, truncated to the planned rank."""
    from espnet_lowrank.apply import _planned_layer, set_submodule
    from espnet_lowrank.factorize import factor_weights

    for name, rank in ranks.items():
        layer = _planned_layer(encoder, name, rank)
        w, b = weight_and_bias(layer)
        d_out, d_in = w.shape
        full = min(d_in, d_out)
        spec = spectra[name]
        w1, w2, _ = factor_weights(w, b, spec, full)
        b64 = (b.detach().to(w2) if b is not None else torch.zeros(d_out, dtype=w2.dtype, device=w2.device))
        mean = spec.mean.to(w2)
        coef = w2.T @ (b64 - mean)
        new = elastic_class_for(layer)(d_in, d_out, int(rank), full)
        new = new.to(device=w.device, dtype=w.dtype)
        new.set_full_basis(w1, w2, mean, coef)
        set_submodule(encoder, name, new)
