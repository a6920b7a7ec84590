"""Dynamic int8 on top of low-rank: the encoder's ``nn.Linear``s (factors and dense ones) become
``torch.ao.nn.quantized.dynamic.Linear`` (qint8 weights per output channel, fbgemm; activations quantized
per tensor on the fly). CPU-only: the exp dir stores float weights, quantized after loading."""

import logging
from typing import List, Tuple

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from espnet_lowrank.handlers import int8_policy
from espnet_lowrank.nn_utils import set_submodule

logger = logging.getLogger(__name__)


def _has_vnni() -> bool:
    """fbgemm's int8 kernels saturate (so need ``reduce_range``: 7-bit activations) only without VNNI."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "vnni" in f.read(1 << 16)
    except OSError:
        return False


FULL_RANGE = _has_vnni()


class FullRangeDynamicLinear(nnqd.Linear):
    """8-bit (not 7-bit) activations, on VNNI CPUs only: halves Whisper tiny.en's encoder int8 error."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:  # pragma: no cover
            return super().forward(x)
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)


def _quantized_linear(layer: nn.Linear) -> nn.Module:
    from torch.ao.nn.quantized.modules.utils import _quantize_weight
    from torch.ao.quantization import per_channel_dynamic_qconfig

    weight = layer.weight.detach().float().cpu()
    # per output channel: the PCA factors' rows differ in scale by orders of magnitude
    observer = per_channel_dynamic_qconfig.weight()
    observer(weight)
    cls = FullRangeDynamicLinear if FULL_RANGE else nnqd.Linear
    qlinear = cls(layer.in_features, layer.out_features, bias_=layer.bias is not None, dtype=torch.qint8)
    bias = layer.bias.detach().float().cpu() if layer.bias is not None else None
    qlinear.set_weight_bias(_quantize_weight(weight, observer), bias)
    return qlinear


def quantized_projection(weight: torch.Tensor) -> nn.Module:
    """``x @ weight.T`` as a dynamic int8 linear, e.g. a tied embedding read as the vocabulary projection."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight.detach().float().cpu()
    return _quantized_linear(layer)


def _plan_int8(module: nn.Module) -> Tuple[List[str], List[str]]:
    """(names to quantize, roots of the subtrees kept float)."""
    quantize, keep = [], []
    for name, m in module.named_modules():
        if any(k == "" or name.startswith(k + ".") for k in keep):
            continue
        policy = int8_policy(m)
        if policy == "float":
            keep.append(name)
        elif policy == "quantize":
            quantize.append(name)
    return quantize, keep


@torch.no_grad()
def quantize_linears_(module: nn.Module) -> int:
    """Swap every float ``nn.Linear`` under ``module`` for a dynamic int8 one in place; returns how many.
    Unlike ``quantize_dynamic``, which matches types exactly, this takes subclasses such as Whisper's
    ``whisper.model.Linear``. What stays float comes from ``handlers.int8_policy``: every rank-space
    attention reads its projections' weights to fold them."""
    if torch.backends.quantized.engine == "none":  # pragma: no cover
        raise RuntimeError("this torch build has no quantized engine for dynamic int8")
    names, skip = _plan_int8(module)
    for name in names:
        layer = module.get_submodule(name)
        if layer.weight.is_cuda:
            raise RuntimeError("int8 (dynamic quantization) is CPU-only: load the model on cpu, "
                               "or set int8: false")
        set_submodule(module, name, _quantized_linear(layer))
    if names:
        module.register_forward_pre_hook(_cpu_only)
    logger.info("int8: quantized %d linears (%d rank-space attention modules kept float)",
                len(names), len(skip))
    return len(names)


def _cpu_only(module, args):
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_cuda:
            raise RuntimeError("this encoder is dynamically int8-quantized, which runs on CPU only; "
                               "decode on cpu or reload with encoder_conf.int8: false")


def quantized_linears(module: nn.Module) -> int:
    return sum(isinstance(m, nnqd.Linear) for m in module.modules())
