"""What a compression step is, and the state the steps hand on. A step is checked before any work
(``check``), applied to the copy in order (``apply``), writes its keys of the exp dir's ``encoder_conf``
(``encoder_conf``) and rebuilds its part of the encoder from them when ``LowRankEncoder`` loads (``rebuild``).
"""

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from espnet_lowrank.batches import batch_windows
from espnet_lowrank.calibration import StatsSet
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.data import Utterance
from espnet_lowrank.families.base import EncoderFamily
from espnet_lowrank.measure import StepCosts
from espnet_lowrank.plan import RankPlan

CalibData = Union[str, Sequence[Utterance]]


@dataclass
class Run:
    """One ``compress`` call: its inputs, and what each step leaves for the next."""

    source: nn.Module  # the dense ESPnetASRModel, never modified
    model: nn.Module  # the copy the steps change
    family: EncoderFamily
    config: LowRankConfig
    targets: Dict[str, tuple]  # layer name -> (role, d_in, d_out)
    stats: Optional[StatsSet] = None  # given (merged) statistics, if any
    utts: Optional[List[Utterance]] = None
    windows: Optional[List[List[Utterance]]] = None  # calibration rows (batches.pack)
    costs: StepCosts = field(default_factory=StepCosts)
    plan: RankPlan = field(default_factory=lambda: RankPlan({}, []))
    spectra: Dict[str, object] = field(default_factory=dict)  # layer name -> Spectrum
    report: dict = field(default_factory=dict)  # what the steps measured, for report.json
    attention: Dict[str, str] = field(default_factory=dict)

    def batches(self, windows) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(speech, lengths) batches of ``windows`` on the model's device, one at a time."""
        device = next(self.model.parameters()).device
        for speech, lengths in batch_windows(windows, self.config.calibration.batch_size,
                                             max_seconds=self.family.input_seconds):
            yield speech.to(device), lengths.to(device)


class Step:
    """One stage of compression; see the module docstring."""

    name = ""
    conf_keys: Tuple[str, ...] = ()  # the encoder_conf keys it writes and reads back

    def wanted(self, config: LowRankConfig) -> bool:
        return True

    def audio_needed(self, config: LowRankConfig) -> Optional[str]:
        """Why ``apply`` needs calibration audio, or None when statistics suffice."""
        return None

    def check(self, model: nn.Module, family: EncoderFamily, config: LowRankConfig,
              targets: Dict[str, tuple]) -> None:
        """Refuse a config that cannot work on this model, before any work."""

    def apply(self, run: Run) -> None:
        raise NotImplementedError

    def encoder_conf(self, run: Run) -> dict:
        return {}

    def rebuild(self, encoder: nn.Module, family: EncoderFamily, conf: dict) -> None:
        """Rebuild this step's modules in a freshly built dense ``encoder`` before model.pth loads."""
