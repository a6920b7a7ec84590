"""Global rank allocation: instead of one θ per role (``plan.make_plan``), keep a fraction ``budget`` of the
target layers' dense cost (FLOPs per frame: 2 k (d_in + d_out) factored, 2 d_in d_out dense) and spend it
where it buys the most.

Every layer starts dense; repeatedly take the rank cut (in steps of ``ranks.rank_multiple``) that loses
the least per unit of cost saved until the budget holds, then give rank back where it saves the most loss
per unit of cost while the budget still holds, so the kept cost ends within one rounding step of it. What a
cut loses is measured (``sensitivity.py``: the encoder-output error with that layer alone cut to that
rank); each layer's own discarded variance lost badly at equal size (bench/DECISIONS.md, "budget by
measured sensitivity"). A layer stays dense where factoring would not save; ties break by layer order.
"""

import logging
from typing import Dict, List, Optional, Tuple

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.factorize import Spectrum
from espnet_lowrank.plan import LayerDecision, RankPlan, fixed_rank

logger = logging.getLogger(__name__)


def flops(d_in: int, d_out: int, rank: Optional[int]) -> float:
    """FLOPs per frame of a layer at ``rank`` (None: dense)."""
    return float(2 * (d_in * d_out if rank is None else rank * (d_in + d_out)))


def candidate_ranks(d_in: int, d_out: int, multiple: int) -> List[int]:
    """Factored ranks worth having, ascending: multiples of ``multiple`` (and the full rank) below the
    break-even k (d_in + d_out) < d_in d_out."""
    full = min(d_in, d_out)
    ranks = list(range(multiple, full + 1, multiple))
    if not ranks or ranks[-1] != full:
        ranks.append(full)
    return [k for k in ranks if k * (d_in + d_out) < d_in * d_out]


class _Layer:
    """One layer's options, ordered from cheapest to dense: (rank, cost, lost)."""

    def __init__(self, name, role, d_in, d_out, spec: Spectrum, multiple, fixed, measured):
        self.name, self.role, self.d_in, self.d_out, self.spec = name, role, d_in, d_out, spec
        if fixed is not None:
            self.options = [(fixed, flops(d_in, d_out, fixed), 0.0)]  # never moved
        else:
            ranks = candidate_ranks(d_in, d_out, multiple)
            self.options = [(k, flops(d_in, d_out, k), measured[k]) for k in ranks]
            self.options.append((None, flops(d_in, d_out, None), 0.0))
        self.fixed = fixed is not None
        self.at = len(self.options) - 1  # start dense (or at the fixed rank)

    @property
    def cost(self) -> float:
        return self.options[self.at][1]

    @property
    def lost(self) -> float:
        return self.options[self.at][2]

    @property
    def rank(self) -> Optional[int]:
        return self.options[self.at][0]


def layer_probes(spectra: Dict[str, Spectrum], layers: Dict[str, Tuple[str, int, int]],
                 config: LowRankConfig) -> Dict[str, Tuple[Spectrum, List[int]]]:
    """The ranks :func:`allocate_ranks` may give each layer (rank_pattern layers excluded): what
    ``sensitivity.measure_sensitivity`` probes."""
    return {name: (spectra[name], candidate_ranks(d_in, d_out, config.ranks.rank_multiple))
            for name, (_, d_in, d_out) in layers.items()
            if fixed_rank(name, config.targets.rank_pattern) is None}


def _best_cut(layer: _Layer) -> Optional[Tuple[float, int]]:
    """(loss per cost saved, target index) of the best cut below the current option; looks past steps that
    save little (e.g. dense -> the break-even rank) so that a layer is not starved by its first step."""
    best = None
    cost, lost = layer.cost, layer.lost
    for i in range(layer.at - 1, -1, -1):
        _, c, l = layer.options[i]
        saved = cost - c
        if saved <= 0:
            continue
        ratio = (l - lost) / saved
        if best is None or ratio < best[0]:
            best = (ratio, i)
    return best


def allocate_ranks(spectra: Dict[str, Spectrum], layers: Dict[str, Tuple[str, int, int]], budget: float,
                   config: Optional[LowRankConfig], measured: Dict[str, Dict[int, float]]) -> RankPlan:
    """Ranks that keep ``budget`` (in (0, 1]) of the dense FLOPs of ``layers`` (name -> (role, d_in, d_out));
    a cut to rank k loses ``measured[name][k]`` (at the :func:`layer_probes` ranks). ``spectra`` give the
    reported explained variance; ``config`` the step and the fixed ranks (``rank_pattern``: counted, never
    changed); θ is only reported. A budget below what the smallest ranks cost raises ValueError."""
    config = config or LowRankConfig()
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be in (0, 1], got {budget}")
    state: List[_Layer] = []
    for name, (role, d_in, d_out) in layers.items():
        if name not in spectra:
            raise ValueError(f"no calibration statistics for layer {name}")
        fixed = fixed_rank(name, config.targets.rank_pattern)
        if fixed is not None and fixed > min(d_in, d_out):
            raise ValueError(f"rank_pattern gives {name} rank {fixed}, but the layer is "
                             f"{d_out}x{d_in} (max rank {min(d_in, d_out)})")
        if fixed is None and name not in measured:
            raise ValueError(f"no measured sensitivity for layer {name}")
        state.append(_Layer(name, role, d_in, d_out, spectra[name], config.ranks.rank_multiple, fixed,
                            measured.get(name)))
    dense_total = sum(flops(l.d_in, l.d_out, None) for l in state)
    target = budget * dense_total
    floor = sum(l.options[0][1] for l in state)
    if floor > target * (1 + 1e-12):
        raise ValueError(f"budget {budget} is below the smallest reachable cost {floor / dense_total:.4f} "
                         f"of dense (every layer at rank {config.ranks.rank_multiple})")

    # Cut where the least variance is lost per unit of cost saved.
    total = sum(l.cost for l in state)
    while total > target * (1 + 1e-12):
        best = None
        for j, layer in enumerate(state):
            cut = _best_cut(layer)
            if cut is not None and (best is None or cut[0] < best[0]):
                best = (cut[0], j, cut[1])
        if best is None:  # unreachable given the floor check
            break
        _, j, i = best
        total -= state[j].cost - state[j].options[i][1]
        state[j].at = i

    # Give rank back one step at a time where it buys the most variance.
    while True:
        best = None
        for j, layer in enumerate(state):
            if layer.at + 1 >= len(layer.options):
                continue
            _, c, l = layer.options[layer.at + 1]
            extra = c - layer.cost
            if total + extra > target * (1 + 1e-12):
                continue
            gain = (layer.lost - l) / extra if extra > 0 else float("inf")
            if best is None or gain > best[0]:
                best = (gain, j)
        if best is None:
            break
        j = best[1]
        total += state[j].options[state[j].at + 1][1] - state[j].cost
        state[j].at += 1

    ranks: Dict[str, int] = {}
    decisions: List[LayerDecision] = []
    for layer in state:
        theta = config.ranks.theta_attention if layer.role == "attention" else config.ranks.theta_feed_forward
        why = "rank_pattern" if layer.fixed else f"budget={budget} (sensitivity)"
        ratios = layer.spec.explained_variance()
        if layer.rank is None:
            why += "; dense"
        else:
            ranks[layer.name] = layer.rank
        explained = 1.0 if layer.rank is None else float(ratios[min(layer.rank, ratios.numel()) - 1])
        decisions.append(LayerDecision(layer.name, layer.role, layer.d_in, layer.d_out, layer.rank,
                                       layer.spec.rank_for(theta), explained, why))
    logger.info("budget %.3f: kept %.4f of the dense flops, %d of %d layers factored",
                budget, total / dense_total, len(ranks), len(state))
    return RankPlan(ranks, decisions)


def plan_cost(plan: RankPlan) -> Tuple[float, float]:
    """(kept, dense) FLOPs per frame of a plan's layers."""
    kept = sum(flops(d.d_in, d.d_out, d.rank) for d in plan.decisions)
    dense = sum(flops(d.d_in, d.d_out, None) for d in plan.decisions)
    return kept, dense
