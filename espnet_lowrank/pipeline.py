"""The one driver: ``compress(model, calib_data, config)``.

targets → statistics → plan → factor and swap → recovery → attention → report,
on a copy of the model; the source model is never modified.

Statistics come in layer groups. One-pass LiteASR is one group: every target
layer calibrated in one pass over the dense model. ``sequential: true`` makes
a group per run of layers that read the same input (``sequential.input_groups``),
in forward order, each calibrated on the copy whose earlier groups are already
factored, with the forward stopped after the group.
"""

import copy
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch

from espnet_lowrank.apply import choose_attention_, factorize_layers_
from espnet_lowrank.balance import balance_factors_, statistics_rms
from espnet_lowrank.batches import batch_windows, calibration_utterances, num_batches, pack
from espnet_lowrank.budget import allocate_ranks, layer_probes
from espnet_lowrank.calibration import StatsSet, calibrate
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import Utterance
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.families import family_for
from espnet_lowrank.measure import StepCosts, peak_rss_mb, runtime_facts
from espnet_lowrank.modes import kept_modes
from espnet_lowrank.plan import RankPlan, make_plan
from espnet_lowrank.progress import progress
from espnet_lowrank.recovery import compared_output, recover_, recover_blocks_, return_freed_memory
from espnet_lowrank.report import build_report
from espnet_lowrank.sensitivity import NUM_WINDOWS, measure_sensitivity
from espnet_lowrank.sequential import input_groups
from espnet_lowrank.smoothing import check_supported, smooth_for_int8_

logger = logging.getLogger(__name__)

CalibData = Union[str, Sequence[Utterance]]


@dataclass
class CompressionResult:
    """The compressed copy, its plan, the config that made it, and the numbers
    for report.json."""

    model: torch.nn.Module
    plan: RankPlan
    attention: Dict[str, str]
    config: LowRankConfig = field(default_factory=LowRankConfig)
    report: dict = field(default_factory=dict)
    # layer name -> cumulative explained variance, for the spectra plot
    spectra: Dict[str, List[float]] = field(default_factory=dict)


def asr_model_of(model_or_speech2text) -> torch.nn.Module:
    """Accept an ESPnetASRModel or a ``Speech2Text``."""
    return getattr(model_or_speech2text, "asr_model", model_or_speech2text)


def _batches(windows: List[List[Utterance]], config: LowRankConfig, device, family):
    for speech, lengths in batch_windows(windows, config.calibration.batch_size, max_seconds=family.input_seconds):
        yield speech.to(device), lengths.to(device)


def _calibrate(model, family, layers: List[str], windows, config, stop_after: bool) -> StatsSet:
    """Output statistics of ``layers`` over ``windows`` (rows made by
    :func:`pack`; CPU, float64), with the model in eval mode; its train/eval
    modes are restored afterwards."""
    started = time.perf_counter()
    with kept_modes(model):
        model.eval()
        stats = calibrate(
            model.encode, model.encoder, _batches(windows, config, next(model.parameters()).device, family),
            layers, frame_mask=family.frame_mask() if family.frame_mask else None,
            total=num_batches(len(windows), config.calibration.batch_size), stop_after=stop_after,
        )
    stats.seconds = time.perf_counter() - started
    stats.peak_rss_mb = peak_rss_mb()
    return stats


def check_config(encoder, family, config: LowRankConfig) -> Dict[str, tuple]:
    """The whole config against this encoder, before any work: every option,
    patterns that match nothing, fixed ranks larger than their layer, options
    the family lacks. Returns the target layers."""
    config.validate()
    targets = family.target_layers(encoder, config)  # raises when nothing matches
    if config.deployment.int8_smoothing:
        check_supported(family)
    names = [n for n, _ in encoder.named_modules()]
    for pattern in list(config.targets.exclude_modules) + list(config.targets.rank_pattern):
        if not any(re.fullmatch(pattern, n) for n in names):
            raise ValueError(f"the pattern {pattern!r} in the low-rank config matches no encoder module")
    for pattern, rank in config.targets.rank_pattern.items():
        for name, (_, d_in, d_out) in targets.items():
            if re.fullmatch(pattern, name) and int(rank) > min(d_in, d_out):
                raise ValueError(f"rank_pattern gives {name} rank {rank}, more than its "
                                 f"{d_out}x{d_in} shape allows (max rank {min(d_in, d_out)})")
    return targets


def _calibration_set(calib_data: CalibData, config: LowRankConfig, family) -> List[Utterance]:
    utts = calibration_utterances(calib_data, config.calibration.num_calib, max_seconds=family.input_seconds)
    asked = config.calibration.num_calib
    if asked is not None and len(utts) < asked:
        logger.warning("num_calib is %d, but the calibration data holds %d utterances: using %d",
                       asked, len(utts), len(utts))
    return utts


def calibrate_model(model, calib_data: CalibData, config: Optional[LowRankConfig] = None) -> StatsSet:
    """Output statistics of every target layer of ``model``'s encoder; the
    results of several jobs add up with ``+``."""
    config = config or LowRankConfig()
    model = asr_model_of(model)
    family = family_for(model.encoder)
    targets = check_config(model.encoder, family, config)
    utts = _calibration_set(calib_data, config, family)
    torch.manual_seed(config.calibration.seed)
    windows = pack(utts, config.calibration.pack_seconds)
    return _calibrate(model, family, list(targets), windows, config, stop_after=False)


def _check_inputs(calib_data, config: LowRankConfig, stats: Optional[StatsSet], targets) -> None:
    """Refuse what cannot work before any calibration pass."""
    if config.deployment.int8_smoothing:
        if calib_data is None:
            raise ValueError("deployment.int8_smoothing compares int8 errors on calibration audio (calib_data), "
                             "not only statistics")
    if stats is not None and config.calibration.sequential:
        raise ValueError("sequential calibration computes its own statistics; drop stats")
    if config.ranks.budget is not None and calib_data is None:
        raise ValueError("ranks.budget allocates by sensitivity measured on calibration audio "
                         "(calib_data), not only statistics")
    if stats is None and calib_data is None:
        raise ValueError("compress needs calib_data or precomputed stats")
    if config.recovery.steps and calib_data is None:
        raise ValueError("recovery_steps needs calibration audio (calib_data), not only statistics")
    if stats is not None:
        missing = sorted(set(targets) - set(stats))
        if missing:
            raise ValueError(f"the statistics lack {len(missing)} target layers, e.g. {missing[:3]}")


def _budget_plan(model, family, targets, windows, config: LowRankConfig, stats: Optional[StatsSet]):
    """(global budget plan, the one-pass statistics it came from): every target
    layer calibrated on ``model`` (dense), each layer's sensitivity measured on
    the first calibration windows, ranks allocated. Sequential calibration then
    factors at these ranks."""
    if stats is None:
        stats = _calibrate(model, family, list(targets), windows, config, stop_after=False)
    spectra = {n: spectrum(stats[n]) for n in targets}
    batches = list(_batches(windows[:NUM_WINDOWS], config, next(model.parameters()).device, family))
    measured = measure_sensitivity(model, batches, layer_probes(spectra, targets, config))
    return allocate_ranks(spectra, targets, config.ranks.budget, config, measured), stats


def _part(plan: RankPlan, names) -> RankPlan:
    names = set(names)
    return RankPlan({n: r for n, r in plan.ranks.items() if n in names},
                    [d for d in plan.decisions if d.name in names])


def compress(
    model,
    calib_data: Optional[CalibData] = None,
    config: Optional[LowRankConfig] = None,
    stats: Optional[StatsSet] = None,
) -> CompressionResult:
    """Compress the encoder of an ESPnet ASR model (or ``Speech2Text``).

    Args:
        model: ESPnetASRModel or Speech2Text; left untouched.
        calib_data: a Kaldi-style data dir or a list of Utterances.
        config: the method options; the defaults are LiteASR's θ pair.
        stats: precomputed (e.g. merged) statistics; skips calibration
            (one pass only).

    Returns:
        CompressionResult with a compressed deep copy of the model.
    """
    config = config or LowRankConfig()
    source = asr_model_of(model)
    family = family_for(source.encoder)
    targets = check_config(source.encoder, family, config)
    _check_inputs(calib_data, config, stats, targets)
    if config.recovery.steps:
        compared_output(source, config.recovery.objective)  # refuses an impossible objective
    utts = _calibration_set(calib_data, config, family) if calib_data is not None else None
    windows = pack(utts, config.calibration.pack_seconds) if utts is not None else None
    torch.manual_seed(config.calibration.seed)

    costs = StepCosts()
    current = copy.deepcopy(source).eval()
    sequential = config.calibration.sequential
    started = time.perf_counter()
    groups = [list(targets)]
    if sequential:
        first = next(_batches(windows, config, next(current.parameters()).device, family))
        groups = input_groups(current, list(targets), first)
    budget_plan, given = None, stats
    if config.ranks.budget is not None:
        with costs.step("rank_allocation"):
            budget_plan, one_pass = _budget_plan(current, family, targets, windows, config, stats)
        stats = None if sequential else one_pass
    spectra, decisions, ranks, frames, stats_mb = {}, [], {}, 0, 0.0
    for group in progress(groups, desc="layer groups", unit="group") if sequential else groups:
        with costs.step("calibration"):
            group_stats = stats if stats is not None else _calibrate(
                current, family, group, windows, config, stop_after=sequential)
        frames = max(frames, group_stats.num_frames)
        stats_mb = max(stats_mb, sum(group_stats[n].gram.numel() * 8 for n in group) / 2 ** 20)
        with costs.step("plan_and_factorization"):
            group_spectra = {n: spectrum(group_stats[n]) for n in group}
            plan = (_part(budget_plan, group) if budget_plan is not None
                    else make_plan(group_spectra, {n: targets[n] for n in group}, config))
            factorize_layers_(current.encoder, plan.ranks, group_spectra)
        spectra.update(group_spectra)
        decisions.extend(plan.decisions)
        ranks.update(plan.ranks)
    plan = RankPlan(ranks, decisions)
    # merged statistics carry their jobs' cost (seconds summed, RSS maxed)
    seconds = given.seconds if given is not None else time.perf_counter() - started
    rss = given.peak_rss_mb if given is not None else peak_rss_mb()

    with costs.step("recovery"):
        recovery = recover_if_asked(current, source, utts, config, family)
    # exact in float; keeps the small components under dynamic int8 (balance.py)
    balance_factors_(current.encoder, statistics_rms(source.encoder, plan.ranks, spectra))
    smoothing = {}
    if config.deployment.int8_smoothing:
        with costs.step("int8_smoothing"):
            smoothing = smooth_for_int8_(current, family, windows, config.calibration.batch_size)
    with costs.step("attention"):
        attention = choose_attention_(current.encoder, family, config.deployment.attention,
                                      family.window_frames(current.encoder))
    report = build_report(source, current, family, config, plan, attention, {
        "calibration_frames": frames,
        "calibration_seconds": round(seconds, 2),
        "calibration_peak_rss_mb": round(rss, 1),
        "statistics_mb": round(stats_mb, 2),
        "calibration_passes": len(groups),
        "calibration_utterances": len(utts) if utts is not None else None,
    }, recovery)
    if smoothing:
        report["int8_smoothing"] = smoothing
    report["steps"] = costs.steps  # wall time and peak RSS of each step
    report["runtime"] = runtime_facts(next(current.parameters()).device)
    logger.info(
        "encoder linear params %d -> %d (%.1f%%)",
        report["encoder_linear_params_dense"],
        report["encoder_linear_params_compressed"],
        100.0 * report["encoder_linear_params_compressed"] / report["encoder_linear_params_dense"],
    )
    curves = {name: spectra[name].explained_variance().float().tolist() for name in targets}
    return CompressionResult(current, plan, attention, config, report, curves)


def recover_if_asked(compressed, source, utts: Optional[List[Utterance]], config: LowRankConfig,
                     family) -> dict:
    """Run the optional distillation (``config.recovery.steps``) on the factors,
    end to end or block by block (``config.recovery.scope``), then the optional
    end-to-end pass after the blocks (``config.recovery.final_steps``)."""
    if not config.recovery.steps:
        return {}
    if not utts:
        raise ValueError("recovery_steps needs calibration audio (calib_data), not only statistics")

    r, c = config.recovery, config.calibration
    if r.return_freed_memory and not return_freed_memory():
        logger.warning("recovery.return_freed_memory: no glibc mallopt here, or it refused the setting; "
                       "memory as it is")
    recompute = family.blocks if r.recompute_blocks else None
    with kept_modes(source):
        if r.scope == "end_to_end":
            return recover_(compressed, source.eval(), utts, r.steps, r.lr, c.batch_size, r.objective,
                            c.pack_seconds, recompute_blocks=recompute, max_seconds=family.input_seconds)
        report = recover_blocks_(compressed, source.eval(), utts, family.blocks, r.steps, r.lr, c.batch_size,
                                 c.pack_seconds, max_seconds=family.input_seconds)
        if r.final_steps:
            report["recovery_final"] = recover_(compressed, source.eval(), utts, r.final_steps, r.lr,
                                                c.batch_size, r.objective, c.pack_seconds,
                                                recompute_blocks=recompute, max_seconds=family.input_seconds)
        return report
