"""Method options for low-rank compression, as a small YAML-friendly dataclass."""

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

ATTENTION_MODES = ("auto", "reduced", "dense")
REFIT_MODES = ("none", "all", "no_qk")


@dataclass
class LowRankConfig:
    """How to pick ranks and which layers to touch.

    Every field is a key of the ``--lowrank_config`` YAML.
    """

    theta_attention: float = field(
        default=0.99, metadata={"help": "explained variance kept by attention projections"}
    )
    theta_feed_forward: float = field(
        default=0.999, metadata={"help": "explained variance kept by feed-forward layers"}
    )
    rank_multiple: int = field(
        default=16, metadata={"help": "ranks are rounded up to a multiple of this"}
    )
    keep_dense_if_no_savings: bool = field(
        default=True,
        metadata={"help": "leave a layer dense when k (d_in + d_out) >= d_in d_out"},
    )
    target_modules: Optional[str] = field(
        default=None,
        metadata={"help": "regex (fullmatch) over encoder module names; default: the family's"},
    )
    exclude_modules: List[str] = field(
        default_factory=list, metadata={"help": "regexes of module names to leave dense"}
    )
    rank_pattern: Dict[str, int] = field(
        default_factory=dict, metadata={"help": "regex -> fixed rank, overriding θ"}
    )
    attention: str = field(
        default="auto",
        metadata={"help": "auto | reduced | dense: how self-attention is computed"},
    )
    num_calib: Optional[int] = field(
        default=None, metadata={"help": "use at most this many calibration utterances"}
    )
    batch_size: int = field(default=4, metadata={"help": "calibration batch size"})
    budget: Optional[float] = field(
        default=None,
        metadata={
            "help": "keep this fraction of the target layers' dense FLOPs, ranks allocated "
            "globally (espnet_lowrank.budget); replaces the θ thresholds"
        },
    )

    int8: bool = field(
        default=False,
        metadata={
            "help": "dynamic int8 (qint8) on the encoder's linears (factors and dense ones), "
            "applied when the exp dir is loaded; CPU only (espnet_lowrank.quantize)"
        },
    )
    elastic: bool = field(
        default=False,
        metadata={
            "help": "store each planned layer's full PCA basis; the rank is chosen at load "
            "from config.yaml's plan (espnet_lowrank.elastic)"
        },
    )

    sequential: bool = field(
        default=False,
        metadata={
            "help": "calibrate block by block on the already-compressed earlier blocks "
            "(one pass per layer group, in forward order; θ mode only; espnet_lowrank.sequential)"
        },
    )
    refit: str = field(
        default="none",
        metadata={
            "help": "with sequential: none | all | no_qk. Fit each layer's factors by least "
            "squares to the dense model's outputs from the compressed model's inputs "
            "(espnet_lowrank.refit); no_qk keeps PCA for query/key projections"
        },
    )
    refit_ridge: float = field(
        default=1e-2, metadata={"help": "ridge term of the refit, relative to the mean input variance"}
    )
    recovery_steps: int = field(
        default=0,
        metadata={
            "help": "after factoring, this many steps of distillation (MSE to the dense "
            "encoder's outputs on the calibration audio), training only the factors "
            "(espnet_lowrank.recovery); 0: off"
        },
    )
    recovery_lr: float = field(default=3e-5, metadata={"help": "Adam learning rate of the recovery (3e-4 diverged on the recipe Conformer)"})

    def __post_init__(self):
        for name in ("theta_attention", "theta_feed_forward"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.rank_multiple < 1:
            raise ValueError(f"rank_multiple must be >= 1, got {self.rank_multiple}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        for pattern, rank in self.rank_pattern.items():
            if int(rank) < 1:
                raise ValueError(f"rank_pattern[{pattern!r}] must be >= 1, got {rank}")
        if self.num_calib is not None and self.num_calib < 1:
            raise ValueError(f"num_calib must be >= 1, got {self.num_calib}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.budget is not None and not 0.0 < float(self.budget) <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.refit not in REFIT_MODES:
            raise ValueError(f"refit must be one of {REFIT_MODES}, got {self.refit!r}")
        if self.refit != "none" and not self.sequential:
            raise ValueError("refit works inside sequential calibration: set sequential: true")
        if self.recovery_steps < 0:
            raise ValueError(f"recovery_steps must be >= 0, got {self.recovery_steps}")
        if self.recovery_steps and self.elastic:
            raise ValueError("recovery trains the rank-k factors, which elastic artifacts do not "
                             "store; use recovery_steps: 0 with elastic")
        if self.refit_ridge < 0:
            raise ValueError(f"refit_ridge must be >= 0, got {self.refit_ridge}")

    @classmethod
    def from_dict(cls, values: dict) -> "LowRankConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown low-rank config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str) -> "LowRankConfig":
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of options")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
