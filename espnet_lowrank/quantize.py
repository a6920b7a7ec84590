"""Dynamic int8 on top of low-rank: every ``nn.Linear`` of the encoder (the
low-rank factors ``down``/``up`` and the linears that stay dense) becomes a
``torch.ao.nn.quantized.dynamic.Linear`` (qint8 weights, per output channel,
fbgemm; activations quantized per tensor on the fly, 8-bit on VNNI CPUs), as
``torch.ao.quantization.quantize_dynamic`` does.

``quantize_dynamic`` itself matches module types exactly, so it skips
subclasses of ``nn.Linear`` such as Whisper's ``whisper.model.Linear``; the
swap here takes any ``nn.Linear`` instance and converts it with the same
``from_float``-style observer. Which modules are swapped and which subtrees
stay float comes from the handler registry (``handlers.int8_policy``): every
rank-space attention (Whisper's ``ReducedSelfAttention``, ESPnet's
``ReducedMultiHeadedAttention`` and its relative-position variant) reads its
projections' weights to fold them, so it stays float.

Quantized modules are CPU-only: the exp dir stores float weights, and
``LowRankEncoder`` quantizes after its state dict is loaded; running the
quantized encoder on CUDA raises a clear error.
"""

import logging
from typing import List, Tuple

import torch
from torch import nn

from espnet_lowrank.handlers import int8_policy
from espnet_lowrank.nn_utils import set_submodule

logger = logging.getLogger(__name__)


def _has_vnni() -> bool:
    """fbgemm's int8 kernels only saturate (and so need ``reduce_range``, i.e.
    7-bit activations) on CPUs without VNNI."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "vnni" in f.read(1 << 16)
    except OSError:
        return False


FULL_RANGE = _has_vnni()


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """Dynamic int8 linear with 8-bit (not 7-bit) activations; only used on
    VNNI CPUs. On Whisper tiny.en this halves the int8 error of the encoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:  # pragma: no cover
            return super().forward(x)
        return torch.ops.quantized.linear_dynamic(
            x, self._packed_params._packed_params, reduce_range=False
        )


def _quantized_linear(layer: nn.Linear) -> nn.Module:
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.nn.quantized.modules.utils import _quantize_weight
    from torch.ao.quantization import per_channel_dynamic_qconfig

    weight = layer.weight.detach().float().cpu()
    # Per-output-channel weight scales: the PCA factors' rows differ in
    # scale by orders of magnitude.
    observer = per_channel_dynamic_qconfig.weight()
    observer(weight)
    cls = FullRangeDynamicLinear if FULL_RANGE else nnqd.Linear
    qlinear = cls(layer.in_features, layer.out_features, bias_=layer.bias is not None,
                  dtype=torch.qint8)
    bias = layer.bias.detach().float().cpu() if layer.bias is not None else None
    qlinear.set_weight_bias(_quantize_weight(weight, observer), bias)
    return qlinear


def quantized_projection(weight: torch.Tensor) -> nn.Module:
    """``x @ weight.T`` (weight (out, in), no bias) as a dynamic int8 linear,
    e.g. a tied embedding read as the vocabulary projection."""
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
    """Swap every float ``nn.Linear`` under ``module`` for a dynamic int8 one
    (in place; CPU). Returns how many were swapped."""
    if torch.backends.quantized.engine == "none":  # pragma: no cover
        raise RuntimeError("this torch build has no quantized engine for dynamic int8")
    names, skip = _plan_int8(module)
    for name in names:
        layer = module.get_submodule(name)
        if layer.weight.is_cuda:
            raise RuntimeError(
                "int8 (dynamic quantization) is CPU-only: load the model on cpu, or set int8: false"
            )
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


def is_quantized_linear(m: nn.Module) -> bool:
    import torch.ao.nn.quantized.dynamic as nnqd

    return isinstance(m, nnqd.Linear)


def quantized_linears(module: nn.Module) -> int:
    return sum(is_quantized_linear(m) for m in module.modules())
