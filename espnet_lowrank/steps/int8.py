"""int8: dynamic int8 of the encoder's linears, applied when the exp dir loads
(``deployment.int8``); model.pth keeps float weights, so the strict key check
sees the float layout."""

from espnet_lowrank.config_checks import got
from espnet_lowrank.quantize import quantize_linears_, quantized_linears
from espnet_lowrank.steps.base import Run, Step


def _quantize_after_load(encoder, incompatible_keys) -> None:
    if not quantized_linears(encoder):
        quantize_linears_(encoder)


class Int8(Step):
    name = "int8"
    conf_keys = ("int8",)

    def wanted(self, config):
        return config.deployment.int8

    def apply(self, run: Run) -> None:
        pass  # nothing to compute: quantized at load

    def encoder_conf(self, run):
        return {"int8": True}  # written only when on, so other exp dirs keep their exact config

    def rebuild(self, encoder, family, conf):
        int8 = conf.get("int8", False)
        if not isinstance(int8, bool):
            raise ValueError(f"encoder_conf.int8: expected true or false, got {got(int8)}")
        if int8:
            encoder.register_load_state_dict_post_hook(_quantize_after_load)
