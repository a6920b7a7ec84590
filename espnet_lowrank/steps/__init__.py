"""The compression steps, in the order ``compress`` applies and ``LowRankEncoder`` rebuilds them. A new
method: one file here with a ``Step`` subclass, its place in ``STEPS``, its ``config.py`` section, tests."""

from espnet_lowrank.steps.attention import Attention
from espnet_lowrank.steps.base import CalibData, Run, Step
from espnet_lowrank.steps.factors import BalanceFactors, Factors, calibrate_layers
from espnet_lowrank.steps.int8 import Int8
from espnet_lowrank.steps.recovery import Recovery
from espnet_lowrank.steps.smoothing import Int8Smoothing

STEPS = (Factors(), Recovery(), BalanceFactors(), Int8Smoothing(), Attention(), Int8())
CONF_KEYS = tuple(key for step in STEPS for key in step.conf_keys)

__all__ = ["STEPS", "CONF_KEYS", "CalibData", "Run", "Step", "calibrate_layers"]
