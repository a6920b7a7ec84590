"""int8 smoothing: divide chosen activations by per-channel scales folded into
the next linears (``deployment.int8_smoothing``; ``espnet_lowrank/smoothing.py``)."""

from espnet_lowrank.config_checks import positive_widths
from espnet_lowrank.smoothing import (build_scaled_activations_, check_supported, scaled_activations,
                                      smooth_for_int8_)
from espnet_lowrank.steps.base import Run, Step


class Int8Smoothing(Step):
    name = "int8_smoothing"
    conf_keys = ("activation_scales",)

    def wanted(self, config):
        return config.deployment.int8_smoothing

    def audio_needed(self, config):
        return "deployment.int8_smoothing compares int8 errors on calibration audio"

    def check(self, model, family, config, targets):
        check_supported(family)

    def apply(self, run: Run) -> None:
        with run.costs.step("int8_smoothing"):
            run.report["int8_smoothing"] = smooth_for_int8_(run.model, run.family, run.windows,
                                                            run.config.calibration.batch_size)

    def encoder_conf(self, run):
        return {"activation_scales": scaled_activations(run.model.encoder)}

    def rebuild(self, encoder, family, conf):
        widths = positive_widths("encoder_conf.activation_scales", conf.get("activation_scales"))
        build_scaled_activations_(encoder, widths)
