"""The one driver, ``compress(model, calib_data, config)``: checks every step against the
model and inputs before any work, then applies the steps (``espnet_lowrank/steps``: factors →
recovery → balance → int8 smoothing → attention → int8) in order to a copy of the model."""

import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from espnet_lowrank.batches import calibration_utterances, pack
from espnet_lowrank.calibration import StatsSet
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import Utterance
from espnet_lowrank.families import family_for
from espnet_lowrank.measure import runtime_facts
from espnet_lowrank.plan import RankPlan
from espnet_lowrank.report import build_report
from espnet_lowrank.steps import STEPS, CalibData, Run, calibrate_layers

logger = logging.getLogger(__name__)


@dataclass
class CompressionResult:
    """The compressed copy, its plan, the config that made it, the numbers for
    report.json, and what each step writes into the exp dir's encoder_conf."""

    model: torch.nn.Module
    plan: RankPlan
    attention: Dict[str, str]
    config: LowRankConfig = field(default_factory=LowRankConfig)
    report: dict = field(default_factory=dict)
    spectra: Dict[str, List[float]] = field(default_factory=dict)  # layer -> cumulative explained variance
    encoder_conf: dict = field(default_factory=dict)


def asr_model_of(model_or_speech2text) -> torch.nn.Module:
    """Accept an ESPnetASRModel or a ``Speech2Text``."""
    return getattr(model_or_speech2text, "asr_model", model_or_speech2text)


def check_config(model, config: LowRankConfig) -> Dict[str, tuple]:
    """The target layers; raises, before any work, on a bad option, a pattern that matches
    nothing, a fixed rank larger than its layer, or an option the family lacks."""
    model = asr_model_of(model)
    family = family_for(model.encoder)
    config.validate()
    targets = family.target_layers(model.encoder, config)  # raises when nothing matches
    for step in STEPS:
        if step.wanted(config):
            step.check(model, family, config, targets)
    return targets


def _check_inputs(calib_data, config: LowRankConfig, stats: Optional[StatsSet], targets) -> None:
    """Refuse inputs that cannot work before any calibration pass."""
    if stats is None and calib_data is None:
        raise ValueError("compress needs calib_data or precomputed stats")
    if calib_data is None:
        for step in STEPS:
            reason = step.wanted(config) and step.audio_needed(config)
            if reason:
                raise ValueError(f"{reason} (calib_data), not only statistics")
    if stats is not None and config.calibration.sequential:
        raise ValueError("sequential calibration computes its own statistics; drop stats")
    if stats is not None:
        missing = sorted(set(targets) - set(stats))
        if missing:
            raise ValueError(f"the statistics lack {len(missing)} target layers, e.g. {missing[:3]}")


def _calibration_set(calib_data: CalibData, config: LowRankConfig, family) -> List[Utterance]:
    utts = calibration_utterances(calib_data, config.calibration.num_calib, max_seconds=family.input_seconds)
    asked = config.calibration.num_calib
    if asked is not None and len(utts) < asked:
        logger.warning("num_calib is %d, but the calibration data holds %d utterances: using %d",
                       asked, len(utts), len(utts))
    return utts


def _run(model, calib_data, config: LowRankConfig, stats=None, copy_model: bool = True) -> Run:
    source = asr_model_of(model)
    targets = check_config(source, config)
    _check_inputs(calib_data, config, stats, targets)
    family = family_for(source.encoder)
    utts = _calibration_set(calib_data, config, family) if calib_data is not None else None
    windows = pack(utts, config.calibration.pack_seconds) if utts is not None else None
    torch.manual_seed(config.calibration.seed)
    current = copy.deepcopy(source).eval() if copy_model else source
    return Run(source, current, family, config, targets, stats=stats, utts=utts, windows=windows)


def calibrate_model(model, calib_data: CalibData, config: Optional[LowRankConfig] = None) -> StatsSet:
    """Output statistics of every target layer of the encoder; several jobs' add up with ``+``."""
    run = _run(model, calib_data, config or LowRankConfig(), copy_model=False)
    return calibrate_layers(run, run.model, list(run.targets), run.windows, stop_after=False)


def compress(model, calib_data: Optional[CalibData] = None, config: Optional[LowRankConfig] = None,
             stats: Optional[StatsSet] = None) -> CompressionResult:
    """A compressed deep copy of an ESPnetASRModel (or ``Speech2Text``), which is left untouched.

    ``calib_data``: a Kaldi-style data dir or a list of Utterances; ``config`` defaults to
    LiteASR's θ pair; ``stats``: precomputed (e.g. merged) statistics, skipping (one-pass) calibration.
    """
    config = config or LowRankConfig()
    run = _run(model, calib_data, config, stats)
    encoder_conf = {}
    for step in STEPS:
        if step.wanted(config):
            step.apply(run)
            encoder_conf.update(step.encoder_conf(run))
    report = build_report(run.source, run.model, run.family, config, run.plan, run.attention, run.report)
    report["steps"] = run.costs.steps  # wall time and peak RSS of each step
    report["runtime"] = runtime_facts(next(run.model.parameters()).device)
    logger.info("encoder linear params %d -> %d (%.1f%%)", report["encoder_linear_params_dense"],
                report["encoder_linear_params_compressed"],
                100.0 * report["encoder_linear_params_compressed"] / report["encoder_linear_params_dense"])
    curves = {name: run.spectra[name].explained_variance().float().tolist() for name in run.targets}
    return CompressionResult(run.model, run.plan, run.attention, config, report, curves, encoder_conf)
