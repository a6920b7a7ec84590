"""Calibration, rank plan and factorization: the step that makes the factors.

One-pass LiteASR is one layer group calibrated on the dense model; ``calibration.sequential`` calibrates
a group per ``sequential.input_groups`` run, in forward order, on the copy whose earlier groups are
already factored. ``ranks.budget`` first allocates ranks over all layers; the groups then factor at them.
"""

import re
import time
from typing import List, Optional

from espnet_lowrank.apply import build_lowrank_layers_, factorize_layers_
from espnet_lowrank.balance import balance_factors_, statistics_rms
from espnet_lowrank.batches import num_batches
from espnet_lowrank.budget import allocate_ranks, layer_probes
from espnet_lowrank.calibration import StatsSet, calibrate
from espnet_lowrank.config_checks import positive_widths
from espnet_lowrank.factorize import spectrum
from espnet_lowrank.measure import peak_rss_mb
from espnet_lowrank.modes import kept_modes
from espnet_lowrank.plan import RankPlan, make_plan
from espnet_lowrank.progress import progress
from espnet_lowrank.sensitivity import NUM_WINDOWS, measure_sensitivity
from espnet_lowrank.sequential import input_groups
from espnet_lowrank.steps.base import Run, Step


def calibrate_layers(run: Run, model, layers: List[str], windows, stop_after: bool) -> StatsSet:
    """Output statistics (CPU, float64) of ``layers`` of ``model`` over ``windows``, in eval mode."""
    started = time.perf_counter()
    with kept_modes(model):
        model.eval()
        stats = calibrate(
            model.encode, model.encoder, run.batches(windows), layers,
            frame_mask=run.family.frame_mask() if run.family.frame_mask else None,
            total=num_batches(len(windows), run.config.calibration.batch_size), stop_after=stop_after,
        )
    stats.seconds = time.perf_counter() - started
    stats.peak_rss_mb = peak_rss_mb()
    return stats


class Factors(Step):
    name = "factors"
    conf_keys = ("plan",)

    def audio_needed(self, config):
        if config.ranks.budget is not None:
            return "ranks.budget allocates by sensitivity measured on calibration audio"
        return None

    def check(self, model, family, config, targets):
        names = [n for n, _ in model.encoder.named_modules()]
        for pattern in list(config.targets.exclude_modules) + list(config.targets.rank_pattern):
            if not any(re.fullmatch(pattern, n) for n in names):
                raise ValueError(f"the pattern {pattern!r} in the low-rank config matches no encoder module")
        for pattern, rank in config.targets.rank_pattern.items():
            for name, (_, d_in, d_out) in targets.items():
                if re.fullmatch(pattern, name) and int(rank) > min(d_in, d_out):
                    raise ValueError(f"rank_pattern gives {name} rank {rank}, more than its "
                                     f"{d_out}x{d_in} shape allows (max rank {min(d_in, d_out)})")

    def apply(self, run: Run) -> None:
        config, current, targets = run.config, run.model, run.targets
        sequential = config.calibration.sequential
        started = time.perf_counter()
        groups = [list(targets)]
        if sequential:
            groups = input_groups(current, list(targets), next(run.batches(run.windows)))
        given, stats, budget_plan = run.stats, run.stats, None
        if config.ranks.budget is not None:
            with run.costs.step("rank_allocation"):
                budget_plan, one_pass = self._budget_plan(run, stats)
            stats = None if sequential else one_pass
        frames, stats_mb, decisions, ranks = 0, 0.0, [], {}
        for group in progress(groups, desc="layer groups", unit="group") if sequential else groups:
            with run.costs.step("calibration"):
                group_stats = stats if stats is not None else calibrate_layers(
                    run, current, group, run.windows, stop_after=sequential)
            frames = max(frames, group_stats.num_frames)
            stats_mb = max(stats_mb, sum(group_stats[n].gram.numel() * 8 for n in group) / 2 ** 20)
            with run.costs.step("plan_and_factorization"):
                spectra = {n: spectrum(group_stats[n]) for n in group}
                if budget_plan is None:
                    plan = make_plan(spectra, {n: targets[n] for n in group}, config)
                else:
                    plan = RankPlan({n: r for n, r in budget_plan.ranks.items() if n in group},
                                    [d for d in budget_plan.decisions if d.name in group])
                factorize_layers_(current.encoder, plan.ranks, spectra)
            run.spectra.update(spectra)
            decisions.extend(plan.decisions)
            ranks.update(plan.ranks)
        run.plan = RankPlan(ranks, decisions)
        # merged statistics carry their jobs' cost (seconds summed, RSS maxed)
        run.report.update({
            "calibration_frames": frames,
            "calibration_seconds": round(given.seconds if given else time.perf_counter() - started, 2),
            "calibration_peak_rss_mb": round(given.peak_rss_mb if given else peak_rss_mb(), 1),
            "statistics_mb": round(stats_mb, 2),
            "calibration_passes": len(groups),
            "calibration_utterances": len(run.utts) if run.utts is not None else None,
        })

    @staticmethod
    def _budget_plan(run: Run, stats: Optional[StatsSet]):
        """(global budget plan, the one-pass statistics it came from): sensitivity measured on the first
        calibration windows of the dense copy."""
        if stats is None:
            stats = calibrate_layers(run, run.model, list(run.targets), run.windows, stop_after=False)
        spectra = {n: spectrum(stats[n]) for n in run.targets}
        batches = list(run.batches(run.windows[:NUM_WINDOWS]))
        measured = measure_sensitivity(run.model, batches, layer_probes(spectra, run.targets, run.config))
        return allocate_ranks(spectra, run.targets, run.config.ranks.budget, run.config, measured), stats

    def encoder_conf(self, run):
        return {"plan": {name: int(rank) for name, rank in run.plan.ranks.items()}}

    def rebuild(self, encoder, family, conf):
        build_lowrank_layers_(encoder, positive_widths("encoder_conf.plan", conf.get("plan")))


class BalanceFactors(Step):
    """Scale each factor pair so that the small components survive dynamic int8 (``balance.py``); exact in
    float, so it always runs, after recovery."""

    name = "balance"

    def apply(self, run: Run) -> None:
        balance_factors_(run.model.encoder, statistics_rms(run.source.encoder, run.plan.ranks, run.spectra))
