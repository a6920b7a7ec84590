"""Attention: self-attention in the rank space where it needs fewer FLOPs
(``deployment.attention``)."""

from espnet_lowrank.apply import choose_attention_
from espnet_lowrank.config import ATTENTION_MODES
from espnet_lowrank.config_checks import short_repr
from espnet_lowrank.steps.base import Run, Step


class Attention(Step):
    name = "attention"
    conf_keys = ("attention",)

    def apply(self, run: Run) -> None:
        with run.costs.step("attention"):
            run.attention = choose_attention_(run.model.encoder, run.family, run.config.deployment.attention,
                                              run.family.window_frames(run.model.encoder))

    def encoder_conf(self, run):
        return {"attention": run.config.deployment.attention}

    def rebuild(self, encoder, family, conf):
        mode = conf.get("attention", "auto")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {short_repr(mode)}; known: {ATTENTION_MODES}")
        encoder.attention_choice = choose_attention_(encoder, family, mode, family.window_frames(encoder))
