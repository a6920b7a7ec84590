"""``encoder: lowrank`` — a dense ESPnet encoder with a low-rank plan applied.

    encoder: lowrank
    encoder_conf:
      base: conformer          # any encoder name that ESPnet's ASR task knows
      base_conf: {...}         # the dense encoder's original encoder_conf
      plan: {encoders.0.feed_forward.w_1: 160, ...}
      attention: auto          # auto | reduced | dense
      activation_scales: {...} # deployment.int8_smoothing's divisions, when any
      int8: true               # deployment.int8, when on

``LowRankEncoder(...)`` returns an instance of a subclass of the base encoder
class (``LowRank<Base>``), so that the module layout, ``forward`` and the
class-name checks in ESPnet (``"Whisper" in type(encoder).__name__``) are
those of the base; only the planned layers are swapped.
"""

import logging
from typing import Dict, Optional

from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_lowrank.artifact import PLAN_VERSION, KeyMismatchError
from espnet_lowrank.config_checks import name_of
from espnet_lowrank.espnet.registry import register_into
from espnet_lowrank.families import family_for
from espnet_lowrank.steps import CONF_KEYS, STEPS

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
        version: the plan format of the exp dir.
        step_conf: each compression step's keys (``steps.CONF_KEYS``):
            ``plan`` (module name -> rank), ``activation_scales`` (activation
            name -> width, int8 smoothing), ``attention`` (auto | reduced |
            dense), ``int8``; each step rebuilds its part (``Step.rebuild``).
    """

    _base_class: Optional[type] = None

    def __new__(cls, *args, base: Optional[str] = None, **kwargs):
        if cls is LowRankEncoder:
            cls = lowrank_subclass(resolve_encoder_class(base))
        return super().__new__(cls)

    def __init__(self, input_size: int, base: str, base_conf: Optional[dict] = None, version: int = 1,
                 **step_conf):
        unknown = sorted(set(step_conf) - set(CONF_KEYS))
        if unknown:
            raise ValueError(f"encoder_conf.{name_of(unknown[0])} is not a low-rank encoder option; "
                             f"known: base, base_conf, version, {', '.join(CONF_KEYS)}")
        if version != PLAN_VERSION:
            raise ValueError(f"encoder_conf.version {version} is not readable by this espnet_lowrank "
                             f"(plan version {PLAN_VERSION}); upgrade the plugin")
        self._base_class.__init__(self, input_size=input_size, **(base_conf or {}))
        family = family_for(self)
        for step in STEPS:  # in compress's order: factors, scaled activations, attention, int8
            step.rebuild(self, family, step_conf)
        # ESPnet loads with strict=False, which would leave factors at their
        # random init: every load path goes through this check.
        self._lowrank_keys = frozenset(self.state_dict())
        self.register_load_state_dict_pre_hook(self._refuse_wrong_keys)

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
