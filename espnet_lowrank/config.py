"""Method options, grouped by concern, checked when they are made.

A ``--lowrank_config`` YAML may give the sections::

    targets:     {target_modules, exclude_modules, rank_pattern}   # which layers
    ranks:       {theta_attention, theta_feed_forward, rank_multiple, budget}
    calibration: {num_calib, batch_size, sequential, seed, pack_seconds}
    recovery:    {steps, lr, objective, scope, final_steps, recompute_blocks, return_freed_memory}
    deployment:  {attention, int8, int8_smoothing}

or the same options as flat keys (``theta_attention: 0.98``,
``recovery_lr: 1.0e-4``), as older files do, and ``version: 1``. Every check lives here: types
(YAML reads ``1e-4`` as a string, so a string is never taken for a number,
nor ``"no"`` for a boolean), bounds, unknown keys and combinations, each
refused in one line that names the key.
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import yaml

ATTENTION_MODES = ("auto", "reduced", "dense")
RECOVERY_OBJECTIVES = ("encoder", "decoder", "decoder+tokens")
RECOVERY_SCOPES = ("end_to_end", "block")
MAX_LR = 1.0
# The YAML schema's version (optional key ``version``); a later schema that
# renames options bumps it, and this module maps the older ones.
VERSION = 1


@dataclass
class Targets:
    """Which encoder layers are factored."""

    target_modules: Optional[str] = field(
        default=None, metadata={"help": "regex (fullmatch) over encoder module names; default: the family's"})
    exclude_modules: List[str] = field(
        default_factory=list, metadata={"help": "regexes of module names to leave dense"})
    rank_pattern: Dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "regex -> fixed rank, overriding θ (kept even where dense is smaller)"})


@dataclass
class Ranks:
    """How ranks are chosen: θ per role, or one global FLOPs budget."""

    theta_attention: float = field(
        default=0.99, metadata={"help": "explained variance kept by attention projections"})
    theta_feed_forward: float = field(
        default=0.999, metadata={"help": "explained variance kept by feed-forward layers"})
    rank_multiple: int = field(default=16, metadata={"help": "ranks are rounded up to a multiple of this"})
    budget: Optional[float] = field(
        default=None,
        metadata={"help": "keep this fraction of the target layers' dense FLOPs, ranks allocated "
                          "globally by measured sensitivity (espnet_lowrank.budget); replaces θ"})


@dataclass
class Calibration:
    num_calib: Optional[int] = field(default=None, metadata={"help": "use at most this many utterances"})
    batch_size: int = field(default=4, metadata={"help": "calibration (and recovery) batch size"})
    sequential: bool = field(
        default=False,
        metadata={"help": "calibrate layer group by layer group, in forward order, each on the "
                          "already-compressed earlier layers (one pass per group; θ only)"})
    seed: int = field(default=0, metadata={"help": "torch seed of calibration and recovery"})
    pack_seconds: Optional[float] = field(
        default=None,
        metadata={"help": "fill each row with consecutive utterances up to this many seconds "
                          "(calibration and recovery; Whisper: 30, as long-form transcription "
                          "feeds its encoder); none: one utterance per row, padded"})


@dataclass
class Recovery:
    steps: int = field(
        default=0,
        metadata={"help": "distillation steps after factoring (MSE to the dense encoder's "
                          "outputs, only the factors train); 0: off"})
    lr: float = field(
        default=3e-5, metadata={"help": "Adam learning rate (3e-4 diverged on the recipe Conformer)"})
    objective: str = field(
        default="encoder",
        metadata={"help": "what recovery matches: 'encoder' (MSE on the encoder output) or "
                          "'decoder' (what the decoder reads: the CTC posteriors, KL; Whisper's "
                          "cross-attention keys and values, MSE) or 'decoder+tokens' (Whisper: that plus "
                          "the KL to the dense decoder's token distribution on the dense model's own "
                          "transcripts)"})
    scope: str = field(
        default="end_to_end",
        metadata={"help": "'end_to_end' (the whole encoder per step) or 'block' (each encoder "
                          "block in turn, from cached inputs, to the dense block's output; "
                          "steps per block, each matched by MSE)"})
    final_steps: int = field(
        default=0,
        metadata={"help": "with scope block: then this many end-to-end steps under objective "
                          "(a short pass that fixes what the blocks could not see); 0: none"})
    recompute_blocks: bool = field(
        default=False,
        metadata={"help": "end-to-end steps recompute each encoder block in the backward pass instead "
                          "of keeping its activations: the same numbers, less memory, more time "
                          "(bench/RESULTS.md, 'recovery's memory')"})
    return_freed_memory: bool = field(
        default=False,
        metadata={"help": "from recovery on, glibc returns freed buffers of 8 MB or more to the system "
                          "(mallopt, as MALLOC_MMAP_THRESHOLD_=8388608 would): the same numbers, less "
                          "memory, more time; for the rest of the process"})


@dataclass
class Deployment:
    attention: str = field(
        default="auto",
        metadata={"help": "auto (fewer FLOPs, deterministic) | reduced | dense: how "
                          "self-attention is computed"})
    int8: bool = field(default=False, metadata={"help": "dynamic int8 on the encoder's linears at load; CPU only"})
    int8_smoothing: bool = field(
        default=False,
        metadata={"help": "smooth the linears' inputs for int8 (SmoothQuant-style, exact in float), at the sites "
                          "that give the encoder output the lowest int8 error on calibration windows; "
                          "Whisper only (espnet_lowrank/smoothing.py)"})


SECTIONS = {"targets": Targets, "ranks": Ranks, "calibration": Calibration,
            "recovery": Recovery, "deployment": Deployment}
# flat YAML key -> (section, field); the flat names are also the attribute names
FLAT_KEYS: Dict[str, Tuple[str, str]] = {
    f.name: (section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
    if section != "recovery"
}
FLAT_KEYS.update(recovery_steps=("recovery", "steps"), recovery_lr=("recovery", "lr"),
                 recovery_objective=("recovery", "objective"), recovery_scope=("recovery", "scope"),
                 recovery_final_steps=("recovery", "final_steps"),
                 recovery_recompute_blocks=("recovery", "recompute_blocks"),
                 recovery_return_freed_memory=("recovery", "return_freed_memory"))
_FLAT_OF = {where: flat for flat, where in FLAT_KEYS.items()}
_REMOVED = {
    "keep_dense_if_no_savings": "a layer is always kept dense where factoring would not save",
    "refit": "the least-squares refit lost to PCA and was removed (bench/RESULTS.md)",
    "refit_ridge": "the least-squares refit lost to PCA and was removed (bench/RESULTS.md)",
}


# Checkers: (key, value) -> value, or a ValueError naming the key.
def _got(value) -> str:
    return f"the string {value!r}" if isinstance(value, str) else f"{value!r}"


def _number(lo: float, hi: float, lo_open: bool = True) -> Callable:
    def check(key, value):
        if isinstance(value, str):
            hint = "without quotes"
            if re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
                mantissa, exponent = re.split("[eE]", value.strip())
                hint = f"{mantissa}.0e{exponent}"
            try:
                float(value)
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {_got(value)}") from None
            raise ValueError(f"{key}: expected a number, got {_got(value)} (write {hint})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key}: expected a number, got {_got(value)}")
        if value < lo or (lo_open and value == lo) or value > hi:
            low = "(" if lo_open else "["
            raise ValueError(f"{key}: must be in {low}{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    return check


def _integer(minimum: int) -> Callable:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {_got(value)}")
        if value < minimum:
            raise ValueError(f"{key}: must be >= {minimum}, got {value}")
        return value

    return check


def _boolean(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {_got(value)}")
    return value


def _optional(check: Callable) -> Callable:
    return lambda key, value: None if value is None else check(key, value)


def _regex(key, value):
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a regular expression (a string), got {_got(value)}")
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{key}: {value!r} is not a valid regular expression ({e})") from None
    return value


def _regex_list(key, value):
    if not isinstance(value, list):
        raise ValueError(f"{key}: expected a list of regular expressions, got {_got(value)}")
    return [_regex(f"{key}[{i}]", v) for i, v in enumerate(value)]


def _rank_pattern(key, value):
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a mapping regex -> rank, got {_got(value)}")
    return {_regex(key, p): _integer(1)(f"{key}[{p!r}]", r) for p, r in value.items()}


def _choice(options) -> Callable:
    def check(key, value):
        if value not in options:
            raise ValueError(f"{key}: must be one of {', '.join(options)}, got {_got(value)}")
        return value

    return check


_CHECKS: Dict[Tuple[str, str], Callable] = {
    ("targets", "target_modules"): _optional(_regex),
    ("targets", "exclude_modules"): _regex_list,
    ("targets", "rank_pattern"): _rank_pattern,
    ("ranks", "theta_attention"): _number(0.0, 1.0),
    ("ranks", "theta_feed_forward"): _number(0.0, 1.0),
    ("ranks", "rank_multiple"): _integer(1),
    ("ranks", "budget"): _optional(_number(0.0, 1.0)),
    ("calibration", "num_calib"): _optional(_integer(1)),
    ("calibration", "batch_size"): _integer(1),
    ("calibration", "sequential"): _boolean,
    ("calibration", "seed"): _integer(0),
    ("calibration", "pack_seconds"): _optional(_number(0.0, 3600.0)),
    ("recovery", "steps"): _integer(0),
    ("recovery", "lr"): _number(0.0, MAX_LR),
    ("recovery", "objective"): _choice(RECOVERY_OBJECTIVES),
    ("recovery", "scope"): _choice(RECOVERY_SCOPES),
    ("recovery", "final_steps"): _integer(0),
    ("recovery", "recompute_blocks"): _boolean,
    ("recovery", "return_freed_memory"): _boolean,
    ("deployment", "attention"): _choice(ATTENTION_MODES),
    ("deployment", "int8"): _boolean,
    ("deployment", "int8_smoothing"): _boolean,
}


class LowRankConfig:
    """Options grouped in five sections (``config.ranks.theta_attention``);
    every option also reads and writes under its flat YAML name
    (``config.theta_attention``, ``config.recovery_lr``).

    ``LowRankConfig(theta_attention=0.98, recovery=Recovery(steps=100))``
    takes sections (dataclasses or dicts) and flat keys alike.
    """

    targets: Targets
    ranks: Ranks
    calibration: Calibration
    recovery: Recovery
    deployment: Deployment

    def __init__(self, **values):
        sections, labels = _split(values)
        for name, cls in SECTIONS.items():
            object.__setattr__(self, name, cls(**sections[name]))
        object.__setattr__(self, "_labels", labels)
        self.validate()

    def validate(self) -> None:
        """Check every option and the combinations; raises ValueError in one line."""
        for (section, name), check in _CHECKS.items():
            key = self._labels.get((section, name), _FLAT_OF[(section, name)])
            part = getattr(self, section)
            setattr(part, name, check(key, getattr(part, name)))
        r = self.recovery
        if r.final_steps and r.scope != "block":
            raise ValueError("recovery.final_steps follows block-wise recovery: set recovery.scope: "
                             "block, or put the steps in recovery.steps")
        if r.scope == "block" and r.objective != "encoder" and not r.final_steps:
            raise ValueError("recovery.scope: block matches each block's output; objective: "
                             f"{r.objective} applies only to an end-to-end pass after it "
                             "(set recovery.final_steps)")

    __post_init__ = validate  # older callers re-check after setting a field

    def __getattr__(self, name):
        if name in FLAT_KEYS:
            section, field_name = FLAT_KEYS[name]
            return getattr(getattr(self, section), field_name)
        raise AttributeError(f"LowRankConfig has no option {name!r}")

    def __setattr__(self, name, value):
        if name in FLAT_KEYS:
            section, field_name = FLAT_KEYS[name]
            setattr(getattr(self, section), field_name, value)
            self.validate()
        elif name in SECTIONS:
            object.__setattr__(self, name, value)
            self.validate()
        else:
            raise AttributeError(f"LowRankConfig has no option {name!r}; known: {sorted(FLAT_KEYS)}")

    def __eq__(self, other):
        return isinstance(other, LowRankConfig) and self.sections() == other.sections()

    def __repr__(self):
        return f"LowRankConfig({self.sections()})"

    @classmethod
    def from_dict(cls, values) -> "LowRankConfig":
        if not isinstance(values, dict):
            raise ValueError(f"expected a mapping of options, got a {type(values).__name__}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str) -> "LowRankConfig":
        """Load and check a YAML file; every problem is one line naming ``path``."""
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
            values = yaml.safe_load(text)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
        values = {} if values is None else values
        try:
            return cls.from_dict(values)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """Flat ``{key: value}``, the names of the flat YAML form."""
        return {"version": VERSION,
                **{flat: getattr(getattr(self, s), f) for flat, (s, f) in FLAT_KEYS.items()}}

    def sections(self) -> dict:
        """``{section: {field: value}}``, the sectioned YAML form."""
        return {"version": VERSION, **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}}


def _split(values: dict):
    """Sort flat keys and section mappings into per-section kwargs; remember
    the key each option was given under, for the error messages."""
    sections: Dict[str, dict] = {name: {} for name in SECTIONS}
    labels: Dict[Tuple[str, str], str] = {}

    def put(where, key, value):
        if where in labels:
            raise ValueError(f"{key}: given twice (also as {labels[where]})")
        labels[where] = key
        sections[where[0]][where[1]] = value

    for key, value in values.items():
        if key == "version":
            if _integer(1)(key, value) != VERSION:
                raise ValueError(f"version: this plugin reads low-rank config version {VERSION}, got {value}")
        elif key in SECTIONS:
            if dataclasses.is_dataclass(value) and isinstance(value, SECTIONS[key]):
                value = dataclasses.asdict(value)
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected a mapping of options, got {_got(value)}")
            known = [f.name for f in dataclasses.fields(SECTIONS[key])]
            for name, v in value.items():
                if name not in known:
                    raise ValueError(f"unknown option {key}.{name}; known in {key}: {', '.join(known)}")
                put((key, name), f"{key}.{name}", v)
        elif key in FLAT_KEYS:
            put(FLAT_KEYS[key], key, value)
        elif key in _REMOVED:
            raise ValueError(f"{key}: this option was removed ({_REMOVED[key]}); delete the key")
        else:
            raise ValueError(f"unknown low-rank config key {key!r}; known: "
                             f"{', '.join(['version'] + list(SECTIONS) + sorted(FLAT_KEYS))}")
    return sections, labels
