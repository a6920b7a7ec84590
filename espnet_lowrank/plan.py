"""Rank planning: from output spectra and the config to a plain ``{module name: rank}`` plan, written
into the YAML that ESPnet reads; layers missing from it stay dense. Never touches a model."""

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.factorize import Spectrum


@dataclass
class LayerDecision:
    """Why one layer got its rank; one row of report.json."""

    name: str
    role: str
    d_in: int
    d_out: int
    rank: Optional[int]  # None: kept dense
    rank_from_theta: int
    explained_variance: float
    reason: str

    @property
    def params_dense(self) -> int:
        return self.d_in * self.d_out

    @property
    def params_kept(self) -> int:
        return self.params_dense if self.rank is None else self.rank * (self.d_in + self.d_out)


@dataclass
class RankPlan:
    ranks: Dict[str, int]
    decisions: List[LayerDecision] = field(default_factory=list)


def fixed_rank(name: str, rank_pattern: Dict[str, int]) -> Optional[int]:
    for pattern, rank in rank_pattern.items():
        if re.fullmatch(pattern, name):
            return int(rank)
    return None


def make_plan(spectra: Dict[str, Spectrum], layers: Dict[str, Tuple[str, int, int]],
              config: LowRankConfig) -> RankPlan:
    """A rank per layer (name -> (role, d_in, d_out); the role, "attention" or "feed_forward", selects θ)."""
    ranks: Dict[str, int] = {}
    decisions: List[LayerDecision] = []
    for name, (role, d_in, d_out) in layers.items():
        if name not in spectra:
            raise ValueError(f"no calibration statistics for layer {name}")
        spec = spectra[name]
        theta = config.ranks.theta_attention if role == "attention" else config.ranks.theta_feed_forward
        from_theta = spec.rank_for(theta)
        fixed = fixed_rank(name, config.targets.rank_pattern)
        full = min(d_in, d_out)
        if fixed is not None:
            if fixed > full:
                raise ValueError(f"rank_pattern gives {name} rank {fixed}, but the layer is "
                                 f"{d_out}x{d_in} (max rank {full})")
            rank, reason = fixed, "rank_pattern"
        else:
            multiple = config.ranks.rank_multiple
            rank, reason = min(math.ceil(from_theta / multiple) * multiple, full), f"theta={theta}"
        kept: Optional[int] = rank
        # Two factors cost k (d_in + d_out), the dense layer d_in d_out. A fixed rank is an explicit
        # request (e.g. full rank, to test the swap): kept even where the dense layer is smaller.
        if fixed is None and rank * (d_in + d_out) >= d_in * d_out:
            kept, reason = None, f"{reason}; dense is smaller"
        explained = float(spec.explained_variance()[rank - 1])
        decisions.append(LayerDecision(name, role, d_in, d_out, kept, from_theta, explained, reason))
        if kept is not None:
            ranks[name] = kept
    return RankPlan(ranks, decisions)
