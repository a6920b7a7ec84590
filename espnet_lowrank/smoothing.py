"""Smoothing of the linears' inputs for dynamic int8 (``deployment.int8_smoothing``): dynamic int8 has
one scale per input tensor, so channels with a large range push the others into a few levels (Whisper
base's GELU outputs reach 200, the median channel's maximum 11). Floats stay the same up to rounding."""

import copy
import logging
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import nn

from espnet_lowrank.batches import batch_windows
from espnet_lowrank.modes import kept_modes
from espnet_lowrank.nn_utils import set_submodule
from espnet_lowrank.progress import progress
from espnet_lowrank.quantize import quantize_linears_

logger = logging.getLogger(__name__)

# β per kind of site: the best uniform values on base (bench/int8_smoothing.py --error)
BETAS = {"norm": 0.7, "value": 0.7, "activation": 0.3}
CANDIDATES = {"none": (), "norms": ("norm", "value"), "activations": ("activation",),
              "both": ("norm", "value", "activation")}
RANGE_WINDOWS = 8  # calibration windows whose max |x_j| set the scales (at most half of them)
ERROR_WINDOWS = 8  # the next windows, on which the candidates' int8 error is compared


@dataclass(frozen=True)
class SmoothingSite:
    """One smoothed input in every encoder block: the output of ``producer`` (a LayerNorm for "norm",
    the value projection for "value", a parameter-free activation for "activation"), which the
    linears ``readers`` read; names are inside the block."""

    kind: str
    producer: str
    readers: Tuple[str, ...]


# family name -> the inputs it may smooth (kept here beside the step, as llm-compressor keeps its
# SmoothQuant mappings); a family without an entry is refused.
SITES: Dict[str, Tuple[SmoothingSite, ...]] = {
    "whisper": (
        SmoothingSite("norm", "attn_ln", ("attn.query", "attn.key", "attn.value")),
        SmoothingSite("norm", "mlp_ln", ("mlp.0",)),
        SmoothingSite("value", "attn.value", ("attn.out",)),
        SmoothingSite("activation", "mlp.1", ("mlp.2",)),
    ),
}


def sites_of(family) -> Tuple[SmoothingSite, ...]:
    return SITES.get(family.name, ())


class ScaledActivation(nn.Module):
    """``activation(x) / scale``; the readers' weight columns carry ``scale``."""

    def __init__(self, activation: nn.Module, width: int):
        super().__init__()
        self.activation = activation
        self.register_buffer("scale", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) / self.scale


def check_supported(family) -> None:
    if not sites_of(family):
        raise ValueError(f"deployment.int8_smoothing: no smoothing sites are declared for {family.name} "
                         "encoders (only Whisper's); set it to false")


def _input_weight(layer: nn.Module) -> torch.Tensor:
    """(d_out or rank, d_in) view of the weight that multiplies the layer's input."""
    w = layer.down.weight if hasattr(layer, "down") else layer.weight
    return w.view(w.shape[0], -1)


def _encode(model, family, windows, batch_size: int, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.encode(s.to(device), n.to(device))[0].flatten(0, 1)
                          for s, n in batch_windows(windows, batch_size, max_seconds=family.input_seconds)])


def input_ranges(model, family, windows, batch_size: int) -> Dict[Tuple[str, int], torch.Tensor]:
    """(block name, site index) -> max |x_j| of the site's input over ``windows``."""
    ranges, hooks = {}, []

    def keep(key, x):
        x = x.detach().flatten(0, -2).abs().amax(0).float().cpu()
        ranges[key] = torch.maximum(ranges[key], x) if key in ranges else x
    for name, block in family.block_modules(model.encoder):
        for i, site in enumerate(sites_of(family)):
            reader = block.get_submodule(site.readers[0])
            hooks.append(reader.register_forward_pre_hook(lambda m, a, key=(name, i): keep(key, a[0])))
    try:
        with kept_modes(model):
            _encode(model.eval(), family, windows, batch_size, next(model.parameters()).device)
    finally:
        for h in hooks:
            h.remove()
    return ranges


@torch.no_grad()
def smooth_(encoder: nn.Module, family, ranges, kinds, betas: Dict[str, float] = BETAS) -> None:
    """SmoothQuant, in place, for the sites whose kind is in ``kinds``: input channel j is divided by
    s_j = max|x_j|^β / max|W[:, j]|^(1−β) and the readers' weight column j multiplied by it."""
    for name, block in family.block_modules(encoder):
        for i, site in enumerate(sites_of(family)):
            if site.kind not in kinds:
                continue
            readers = [_input_weight(block.get_submodule(r)) for r in site.readers]
            x_range = ranges[(name, i)].to(readers[0])
            w_range = torch.stack([w.abs().amax(0) for w in readers]).amax(0)
            beta = betas[site.kind]
            s = x_range.clamp_min(1e-5) ** beta / w_range.clamp_min(1e-5) ** (1 - beta)
            for w in readers:
                w.mul_(s)
            producer = block.get_submodule(site.producer)
            if site.kind == "norm":
                producer.weight.div_(s)
                producer.bias.div_(s)
            elif site.kind == "value":  # read by ``out`` after attention mixes frames, not channels
                rows = producer.up if hasattr(producer, "up") else producer
                rows.weight.view(s.numel(), -1).div_(s[:, None])
                rows.bias.div_(s)
            else:  # divides at run time; its ``scale`` buffer is stored in model.pth
                scaled = ScaledActivation(producer, s.numel()).to(s)
                scaled.scale.copy_(s)
                set_submodule(block, site.producer, scaled)


def scaled_activations(encoder: nn.Module) -> Dict[str, int]:
    """name -> width of every ScaledActivation (``encoder_conf.activation_scales``)."""
    return {n: m.scale.numel() for n, m in encoder.named_modules() if isinstance(m, ScaledActivation)}


def build_scaled_activations_(encoder: nn.Module, widths: Dict[str, int]) -> None:
    """Wrap the named activations with unit scales, ready for model.pth's."""
    for name, width in widths.items():
        set_submodule(encoder, name, ScaledActivation(encoder.get_submodule(name), int(width)))


def _relative_int8_error(cpu_model, family, ranges, kinds, windows, batch_size, reference) -> float:
    # the decoder and CTC, which encode does not run, are shared instead of copied
    shared = (getattr(cpu_model, name, None) for name in ("decoder", "ctc"))
    trial = copy.deepcopy(cpu_model, {id(m): m for m in shared if m is not None}).eval()
    smooth_(trial.encoder, family, ranges, kinds)
    quantize_linears_(trial.encoder)
    out = _encode(trial, family, windows, batch_size, torch.device("cpu"))
    return ((out - reference).norm() / reference.norm()).item()


def smooth_for_int8_(model, family, windows, batch_size: int) -> dict:
    """Apply, in place, the candidate with the lowest int8 error of the encoder output; returns the
    measurements for report.json. No fixed choice helps every model (bench/DECISIONS.md): smoothing
    every site cuts base's error 0.123 -> 0.086 but doubles tiny.en's, where only the norms help."""
    # compared on windows the ranges did not see: in-sample, smoothing looks better than it is
    split = max(1, min(RANGE_WINDOWS, len(windows) // 2))
    ranges = input_ranges(model, family, windows[:split], batch_size)
    held = windows[split:split + ERROR_WINDOWS] or windows[:split]
    # int8 runs on CPU: a model elsewhere is copied there once
    cpu_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    with kept_modes(cpu_model):
        reference = _encode(cpu_model.eval(), family, held, batch_size, torch.device("cpu"))
        errors = {c: round(_relative_int8_error(cpu_model, family, ranges, CANDIDATES[c], held, batch_size,
                                                reference), 5)
                  for c in progress(CANDIDATES, desc="int8 smoothing candidates", unit="candidate")}
    chosen = min(errors, key=errors.get)
    smooth_(model.encoder, family, ranges, CANDIDATES[chosen])
    logger.info("int8 smoothing: %s (int8 error of the encoder output %s)", chosen, errors)
    return {"chosen": chosen, "int8_error": errors, "betas": BETAS, "range_windows": split,
            "error_windows": len(held), "error_windows_held_out": len(windows) > 1}
