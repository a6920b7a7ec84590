"""``encoder: lowrank``: a dense ESPnet encoder (``encoder_conf.base``/``base_conf``) over which the
compression steps rebuild their parts (``plan``, ``activation_scales``, ``attention``, ``int8``)."""

import functools
from typing import Optional

from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_lowrank.artifact import PLAN_VERSION, KeyMismatchError
from espnet_lowrank.config_checks import name_of
from espnet_lowrank.espnet.registry import register_into
from espnet_lowrank.families import family_for
from espnet_lowrank.steps import CONF_KEYS, STEPS


def resolve_encoder_class(base: str) -> type:
    """The class ESPnet's ASR task registers under ``base``."""
    from espnet2.tasks import asr

    register_into(asr)
    if base is None or base.lower() == "lowrank":
        raise ValueError("encoder_conf.base must name a dense encoder, e.g. conformer")
    if base.lower() not in asr.encoder_choices.classes:
        raise ValueError(f"unknown base encoder {base!r}; known: {sorted(asr.encoder_choices.classes)}")
    return asr.encoder_choices.get_class(base)


@functools.cache
def lowrank_subclass(base_cls: type) -> type:
    """``LowRank<Base>``: LowRankEncoder's constructor, the base's everything else."""
    return type(f"LowRank{base_cls.__name__}", (LowRankEncoder, base_cls),
                {"_base_class": base_cls, "__module__": __name__})


class LowRankEncoder(AbsEncoder):
    """Builds the base encoder (``base``: its registered name, ``base_conf``: its arguments), then each
    step rebuilds its part from its ``steps.CONF_KEYS`` in ``step_conf`` (``plan``: name -> rank, ...).

    ``LowRankEncoder(...)`` is an instance of ``LowRank<Base>``, a subclass of the base class, so that the
    module layout, ``forward`` and ESPnet's class-name checks (``"Whisper" in type(encoder).__name__``)
    are the base's.
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
        # ESPnet loads with strict=False, which would leave factors at their random init: check every load
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
