"""``encoder: lowrank`` — a dense ESPnet encoder with a low-rank plan applied.

    encoder: lowrank
    encoder_conf:
      base: conformer          # any encoder name that ESPnet's ASR task knows
      base_conf: {...}         # the dense encoder's original encoder_conf
      plan: {encoders.0.feed_forward.w_1: 160, ...}
      attention: auto          # auto | reduced | dense
      activation_scales: {...} # deployment.int8_smoothing's divisions, when any

``LowRankEncoder(...)`` returns an instance of a subclass of the base encoder
class (``LowRank<Base>``), so that the module layout, ``forward`` and the
class-name checks in ESPnet (``"Whisper" in type(encoder).__name__``) are
those of the base; only the planned layers are swapped.
"""

import logging
from typing import Dict, Optional

from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_lowrank.apply import build_lowrank_layers_, choose_attention_
from espnet_lowrank.artifact import PLAN_VERSION, KeyMismatchError
from espnet_lowrank.config import ATTENTION_MODES
from espnet_lowrank.config_checks import got, name_of, short_repr
from espnet_lowrank.espnet.registry import register_into
from espnet_lowrank.families import family_for
from espnet_lowrank.quantize import quantize_linears_, quantized_linears
from espnet_lowrank.smoothing import build_scaled_activations_

logger = logging.getLogger(__name__)

_SUBCLASSES: Dict[type, type] = {}


def resolve_encoder_class(base: str) -> type:
    """The class ESPnet's ASR task registers under ``base``."""
    from espnet2.tasks import asr


    register_into(asr)
    if base is None or base.lower() == "lowrank":
        raise ValueError("encoder_conf.base must name a dense encoder, e.g. conformer")
    if base.lower() not in asr.encoder_choices.classes:
        raise ValueError(f"unknown base encoder {base!r}; known: {sorted(asr.encoder_choices.classes)}")
    return asr.encoder_choices.get_class(base)


def lowrank_subclass(base_cls: type) -> type:
    """``LowRank<Base>``: LowRankEncoder's constructor, the base's everything else."""
    if base_cls not in _SUBCLASSES:
        _SUBCLASSES[base_cls] = type(
            f"LowRank{base_cls.__name__}",
            (LowRankEncoder, base_cls),
            {"_base_class": base_cls, "__module__": __name__},
        )
    return _SUBCLASSES[base_cls]


class LowRankEncoder(AbsEncoder):
    """Builds the base encoder, then swaps the planned layers in place.

    Args:
        input_size: passed to the base encoder.
        base: the base encoder's registered name (``conformer``, ``whisper_local``, ...).
        base_conf: the base encoder's keyword arguments.
        plan: module name (inside the encoder) -> rank.
        activation_scales: activation name -> width, divided at run time
            (``deployment.int8_smoothing``; the scales are in model.pth).
        attention: ``auto`` (rank-space attention where it needs fewer
            FLOPs), ``reduced`` or ``dense``.
    """

    _base_class: Optional[type] = None

    def __new__(cls, *args, base: Optional[str] = None, **kwargs):
        if cls is LowRankEncoder:
            cls = lowrank_subclass(resolve_encoder_class(base))
        return super().__new__(cls)

    def __init__(
        self,
        input_size: int,
        base: str,
        base_conf: Optional[dict] = None,
        plan: Optional[Dict[str, int]] = None,
        attention: str = "auto",
        int8: bool = False,
        version: int = 1,
        activation_scales: Optional[Dict[str, int]] = None,
    ):
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {short_repr(attention)}; known: {ATTENTION_MODES}")
        plan = _widths("plan", plan)
        activation_scales = _widths("activation_scales", activation_scales)
        if not isinstance(int8, bool):
            raise ValueError(f"encoder_conf.int8: expected true or false, got {got(int8)}")
        if version != PLAN_VERSION:
            raise ValueError(f"encoder_conf.version {version} is not readable by this espnet_lowrank "
                             f"(plan version {PLAN_VERSION}); upgrade the plugin")
        self._base_class.__init__(self, input_size=input_size, **(base_conf or {}))
        family = family_for(self)
        build_lowrank_layers_(self, plan)
        build_scaled_activations_(self, activation_scales)
        frames = family.window_frames(self)
        self.attention_choice = choose_attention_(self, family, attention, frames)
        self.lowrank_plan = plan
        self.lowrank_int8 = bool(int8)
        # ESPnet loads with strict=False, which would leave factors at their
        # random init: every load path goes through this check.
        self._lowrank_keys = frozenset(self.state_dict())
        self.register_load_state_dict_pre_hook(self._refuse_wrong_keys)
        if int8:
            # model.pth holds float weights (the strict key check sees the
            # float layout); quantize once they are loaded.
            self.register_load_state_dict_post_hook(_quantize_after_load)


    @staticmethod
    def _refuse_wrong_keys(module, state_dict, prefix, *_args) -> None:
        found = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
        missing = sorted(module._lowrank_keys - found)
        unexpected = sorted(found - module._lowrank_keys)
        if missing or unexpected:
            raise KeyMismatchError(
                f"the checkpoint does not fit the low-rank encoder of this config.yaml: "
                f"{len(missing)} missing keys under {prefix or '(root)'} (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); is model.pth the dense "
                "model's or another plan's?"
            )


def _widths(key: str, values) -> Dict[str, int]:
    """``encoder_conf.<key>``: module name -> positive integer, checked so that
    a hand-edited config.yaml fails in one line naming the entry."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"encoder_conf.{key}: expected a mapping of module name -> integer, got {got(values)}")
    for name, width in values.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"encoder_conf.{key}[{name_of(name)}]: expected a positive integer, "
                             f"got {got(width)}")
    return dict(values)


def _quantize_after_load(encoder, incompatible_keys) -> None:
    if quantized_linears(encoder):
        return
    quantize_linears_(encoder)

