"""The one verb: ``compress(model, calib_data, config)``.

calibration data → output statistics → rank plan → factors swapped into a
copy of the model. The source model is never modified.
"""

import copy
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch

from espnet_lowrank.apply import choose_attention_, factorize_layers_
from espnet_lowrank.calibration import StatsSet, calibrate
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import Utterance, iter_batches, num_batches, read_data_dir, select
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.families import family_for
from espnet_lowrank.measure import encoder_flops, encoder_linear_params
from espnet_lowrank.modes import restore_modes, training_modes
from espnet_lowrank.plan import RankPlan, make_plan

logger = logging.getLogger(__name__)

CalibData = Union[str, Sequence[Utterance]]


@dataclass
class CompressionResult:
    """The compressed copy, its plan, and the numbers for report.json."""

    model: torch.nn.Module
    plan: RankPlan
    attention: Dict[str, str]
    report: dict = field(default_factory=dict)
    # layer name -> cumulative explained variance, for the spectra plot
    spectra: Dict[str, List[float]] = field(default_factory=dict)


def asr_model_of(model_or_speech2text) -> torch.nn.Module:
    """Accept an ESPnetASRModel or a ``Speech2Text``."""
    return getattr(model_or_speech2text, "asr_model", model_or_speech2text)


def _calibration_utterances(calib_data: CalibData, num_calib: Optional[int]) -> List[Utterance]:
    utts = read_data_dir(calib_data) if isinstance(calib_data, str) else list(calib_data)
    utts = select(utts, num_calib)
    if not utts:
        raise ValueError("the calibration set is empty: no utterances to calibrate on")
    return utts


def calibrate_model(model, calib_data: CalibData, config: Optional[LowRankConfig] = None) -> StatsSet:
    """Output statistics of every target layer of ``model``'s encoder; the
    results of several jobs add up with ``+``."""
    config = config or LowRankConfig()
    model = asr_model_of(model)
    family = family_for(model.encoder)
    targets = family.target_layers(model.encoder, config)
    utts = _calibration_utterances(calib_data, config.num_calib)
    device = next(model.parameters()).device
    batches = (
        (speech.to(device), lengths.to(device))
        for speech, lengths in iter_batches(utts, config.batch_size)
    )
    was_training = training_modes(model)
    model.eval()
    started = time.perf_counter()
    try:
        stats = calibrate(
            model.encode,
            model.encoder,
            batches,
            list(targets),
            frame_mask=family.frame_mask() if family.frame_mask else None,
            total=num_batches(len(utts), config.batch_size),
        )
    finally:
        restore_modes(model, was_training)
    stats.seconds = time.perf_counter() - started
    stats.peak_rss_mb = peak_rss_mb()
    return stats


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
        config: thresholds and targets; the defaults are LiteASR's θ pair.
        stats: precomputed (e.g. merged) statistics; skips calibration.

    Returns:
        CompressionResult with a compressed deep copy of the model.
    """
    config = config or LowRankConfig()
    if config.sequential:
        if stats is not None:
            raise ValueError("sequential calibration computes its own statistics; drop stats")
        from espnet_lowrank.sequential import compress_sequential

        return compress_sequential(model, calib_data, config)
    source = asr_model_of(model)
    family = family_for(source.encoder)
    targets = family.target_layers(source.encoder, config)

    if stats is None:
        if calib_data is None:
            raise ValueError("compress needs calib_data or precomputed stats")
        stats = calibrate_model(source, calib_data, config)
    missing = sorted(set(targets) - set(stats))
    if missing:
        raise ValueError(f"the statistics lack {len(missing)} target layers, e.g. {missing[:3]}")

    spectra = {name: spectrum(stats[name]) for name in targets}
    if config.budget is not None:
        from espnet_lowrank.budget import allocate_ranks

        plan = allocate_ranks(spectra, targets, float(config.budget), config)
    else:
        plan = make_plan(spectra, targets, config)

    compressed = copy.deepcopy(source).eval()
    if config.elastic:
        from espnet_lowrank.experimental.elastic import factorize_elastic_

        factorize_elastic_(compressed.encoder, plan.ranks, spectra)
    else:
        factorize_layers_(compressed.encoder, plan.ranks, spectra)
    recovery = recover_if_asked(compressed, source, calib_data, config)
    frames = family.window_frames(compressed.encoder)
    attention = choose_attention_(compressed.encoder, family, config.attention, frames)

    report = build_report(source, compressed, family, config, plan, attention)
    report.update(recovery)
    report.update({
        "calibration_frames": stats.num_frames,
        # merged statistics carry their jobs' cost (seconds summed, RSS maxed)
        "calibration_seconds": round(stats.seconds, 2),
        "calibration_peak_rss_mb": round(stats.peak_rss_mb, 1),
        "statistics_mb": round(sum(s.gram.numel() * 8 for s in stats.values()) / 2 ** 20, 2),
    })
    logger.info(
        "encoder linear params %d -> %d (%.1f%%)",
        report["encoder_linear_params_dense"],
        report["encoder_linear_params_compressed"],
        100.0 * report["encoder_linear_params_compressed"] / report["encoder_linear_params_dense"],
    )
    curves = {name: spectra[name].explained_variance().float().tolist() for name in targets}
    return CompressionResult(compressed, plan, attention, report, curves)


def recover_if_asked(compressed, source, calib_data: Optional[CalibData], config: LowRankConfig) -> dict:
    """Run the optional distillation (``config.recovery_steps``) on the factors."""
    if not config.recovery_steps:
        return {}
    if calib_data is None:
        raise ValueError("recovery_steps needs calibration audio (calib_data), not only statistics")
    from espnet_lowrank.recovery import recover_

    utts = _calibration_utterances(calib_data, config.num_calib)
    was_training = training_modes(source)
    try:
        return recover_(compressed, source.eval(), utts, config.recovery_steps, config.recovery_lr,
                        config.batch_size)
    finally:
        restore_modes(source, was_training)


def build_report(source, compressed, family, config: LowRankConfig, plan: RankPlan, attention) -> dict:
    """The part of report.json that every compression mode shares."""
    return {
        "family": family.name,
        "config": config.to_dict(),
        "plan": dict(plan.ranks),
        "layers": [
            {
                "name": d.name,
                "role": d.role,
                "d_in": d.d_in,
                "d_out": d.d_out,
                "rank": d.rank,
                "rank_from_theta": d.rank_from_theta,
                "explained_variance": round(d.explained_variance, 6),
                "params_dense": d.params_dense,
                "params_kept": d.params_kept,
                "reason": d.reason,
            }
            for d in plan.decisions
        ],
        "attention": attention,
        "flops_window_seconds": family.window_seconds,
        "encoder_linear_params_dense": encoder_linear_params(source),
        "encoder_linear_params_compressed": encoder_linear_params(compressed),
        "encoder_flops_dense": encoder_flops(source, family.window_seconds),
        "encoder_flops_compressed": encoder_flops(compressed, family.window_seconds),
    }
