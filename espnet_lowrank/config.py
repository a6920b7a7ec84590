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

Sections are frozen and checked when made, so a config is valid for its
whole life: a change is a new object (``config.replace(num_calib=8)``).
"""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import yaml

from espnet_lowrank.config_checks import (boolean, choice, expanded_size, got, integer, number, optional,
                                          name_of, rank_pattern, regex, regex_list, short_repr)

ATTENTION_MODES = ("auto", "reduced", "dense")
RECOVERY_OBJECTIVES = ("encoder", "decoder", "decoder+tokens")
RECOVERY_SCOPES = ("end_to_end", "block")
MAX_LR = 1.0
# The YAML schema's version (optional key ``version``); a later schema that
# renames options bumps it, and this module maps the older ones.
VERSION = 1
# A method config is a few dozen lines; larger files, or aliases that expand
# past this many values, are refused before they are parsed or walked.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 10_000


class _Section:
    """A frozen group of options; every value is checked (and normalized,
    e.g. ints to floats) when the group is made."""

    def __post_init__(self):
        section = _SECTION_NAME[type(self)]
        for f in dataclasses.fields(self):
            value = _CHECKS[(section, f.name)](f"{section}.{f.name}", getattr(self, f.name))
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class Targets(_Section):
    """Which encoder layers are factored."""

    target_modules: Optional[str] = field(
        default=None, metadata={"help": "regex (fullmatch) over encoder module names; default: the family's"})
    exclude_modules: Tuple[str, ...] = field(
        default=(), metadata={"help": "regexes of module names to leave dense"})
    rank_pattern: Dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "regex -> fixed rank, overriding θ (kept even where dense is smaller)"})


@dataclass(frozen=True)
class Ranks(_Section):
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


@dataclass(frozen=True)
class Calibration(_Section):
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


@dataclass(frozen=True)
class Recovery(_Section):
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
                          "(bench/DECISIONS.md, 'recovery's memory')"})
    return_freed_memory: bool = field(
        default=False,
        metadata={"help": "from recovery on, glibc returns freed buffers of 8 MB or more to the system "
                          "(mallopt, as MALLOC_MMAP_THRESHOLD_=8388608 would): the same numbers, less "
                          "memory, more time; for the rest of the process"})

    def __post_init__(self):
        super().__post_init__()
        if self.final_steps and self.scope != "block":
            raise ValueError("recovery.final_steps follows block-wise recovery: set recovery.scope: "
                             "block, or put the steps in recovery.steps")
        if self.scope == "block" and self.objective != "encoder" and not self.final_steps:
            raise ValueError("recovery.scope: block matches each block's output; objective: "
                             f"{self.objective} applies only to an end-to-end pass after it "
                             "(set recovery.final_steps)")


@dataclass(frozen=True)
class Deployment(_Section):
    attention: str = field(
        default="auto",
        metadata={"help": "auto (fewer FLOPs, deterministic) | reduced | dense: how "
                          "self-attention is computed"})
    int8: bool = field(
        default=False,
        metadata={"help": "dynamic int8 at load, CPU only: the encoder's linears, and with Whisper the "
                          "decoder's linears and vocabulary projection (recorded in the exp dir's config.yaml)"})
    int8_smoothing: bool = field(
        default=False,
        metadata={"help": "smooth the linears' inputs for int8 (SmoothQuant-style, exact in float), at the sites "
                          "that give the encoder output the lowest int8 error on calibration windows; "
                          "Whisper only (espnet_lowrank/smoothing.py)"})


SECTIONS = {"targets": Targets, "ranks": Ranks, "calibration": Calibration,
            "recovery": Recovery, "deployment": Deployment}
_SECTION_NAME = {cls: name for name, cls in SECTIONS.items()}
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
_REMOVED = {
    "keep_dense_if_no_savings": "a layer is always kept dense where factoring would not save",
    "refit": "the least-squares refit lost to PCA and was removed (bench/DECISIONS.md)",
    "refit_ridge": "the least-squares refit lost to PCA and was removed (bench/DECISIONS.md)",
}


_CHECKS: Dict[Tuple[str, str], Callable] = {
    ("targets", "target_modules"): optional(regex),
    ("targets", "exclude_modules"): regex_list,
    ("targets", "rank_pattern"): rank_pattern,
    ("ranks", "theta_attention"): number(0.0, 1.0),
    ("ranks", "theta_feed_forward"): number(0.0, 1.0),
    ("ranks", "rank_multiple"): integer(1),
    ("ranks", "budget"): optional(number(0.0, 1.0)),
    ("calibration", "num_calib"): optional(integer(1)),
    ("calibration", "batch_size"): integer(1),
    ("calibration", "sequential"): boolean,
    ("calibration", "seed"): integer(0),
    ("calibration", "pack_seconds"): optional(number(0.0, 3600.0)),
    ("recovery", "steps"): integer(0),
    ("recovery", "lr"): number(0.0, MAX_LR),
    ("recovery", "objective"): choice(RECOVERY_OBJECTIVES),
    ("recovery", "scope"): choice(RECOVERY_SCOPES),
    ("recovery", "final_steps"): integer(0),
    ("recovery", "recompute_blocks"): boolean,
    ("recovery", "return_freed_memory"): boolean,
    ("deployment", "attention"): choice(ATTENTION_MODES),
    ("deployment", "int8"): boolean,
    ("deployment", "int8_smoothing"): boolean,
}



@dataclass(frozen=True, init=False)
class LowRankConfig:
    """Options grouped in five frozen sections (``config.ranks.theta_attention``).

    ``LowRankConfig(ranks=Ranks(theta_attention=0.98), recovery={"steps": 100})``
    takes sections as dataclasses or dicts. The flat names of older YAML files
    (``theta_attention=0.98``, ``recovery_lr=1e-4``; ``FLAT_KEYS``) are read as
    a migration, here and in ``from_yaml``; a config is read by section only.
    A config never changes after it is made; ``config.replace(...)`` returns a
    new, checked one.
    """

    targets: Targets
    ranks: Ranks
    calibration: Calibration
    recovery: Recovery
    deployment: Deployment

    def __init__(self, **values):
        sections, labels = _split(values)
        for name, cls in SECTIONS.items():
            try:
                part = cls(**sections[name])
            except ValueError as e:  # name the option as the caller gave it
                message = str(e)
                for (section, option), label in labels.items():
                    prefix = f"{section}.{option}"
                    if section == name and message.startswith(prefix):
                        message = label + message[len(prefix):]
                        break
                raise ValueError(message) from None
            object.__setattr__(self, name, part)

    def validate(self) -> None:
        """Check every option and the combinations again (``compress`` does,
        before any work); raises ValueError in one line."""
        for name, cls in SECTIONS.items():
            part = getattr(self, name)
            cls(**{f.name: getattr(part, f.name) for f in dataclasses.fields(cls)})

    def replace(self, **values) -> "LowRankConfig":
        """A new, checked config with ``values`` (flat keys or sections) changed;
        this one stays as it is."""
        kept, given = self.sections(), dict(values)
        del kept["version"]
        for key, value in values.items():
            if key in FLAT_KEYS:
                section, option = FLAT_KEYS[key]
                del kept[section][option]
            elif key in SECTIONS and isinstance(value, dict):
                kept[key] = {**kept[key], **given.pop(key)}
            elif key in SECTIONS:
                del kept[key]  # a whole section object
        return type(self)(**kept, **given)

    @classmethod
    def from_dict(cls, values) -> "LowRankConfig":
        if not isinstance(values, dict):
            raise ValueError(f"expected a mapping of options, got a {type(values).__name__}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str) -> "LowRankConfig":
        """Load and check a YAML file; every problem is one line naming ``path``."""
        values = _read_yaml_file(path)
        try:
            return cls.from_dict(values)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """Flat ``{key: value}``, the names of the flat YAML form."""
        return {"version": VERSION,
                **{flat: _plain(getattr(getattr(self, s), f)) for flat, (s, f) in FLAT_KEYS.items()}}

    def sections(self) -> dict:
        """``{section: {field: value}}``, the sectioned YAML form."""
        return {"version": VERSION,
                **{name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
                   for name in SECTIONS}}


def _plain(value):
    """YAML-safe: tuples as lists, mappings copied."""
    if isinstance(value, tuple):
        return list(value)
    return dict(value) if isinstance(value, dict) else value


def _read_yaml_file(path: str):
    """The YAML mapping in ``path``: a regular file, at most ``MAX_FILE_BYTES``,
    UTF-8, not empty, whose aliases expand to at most ``MAX_VALUES`` values."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"low-rank config not found: {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the low-rank config ({e.strerror})") from None
    if not os.path.isfile(path):  # a FIFO would hang, a device never end
        raise ValueError(f"{path}: the low-rank config is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {st.st_size} bytes, more than a low-rank config's "
                         f"{MAX_FILE_BYTES} byte limit")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_FILE_BYTES + 1).decode("utf-8")
        values = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    if values is None:
        raise ValueError(f"{path} is empty: give options, or leave out --lowrank_config for the "
                         "family's default (conf/lowrank/<family>.yaml)")
    if expanded_size(values, MAX_VALUES) > MAX_VALUES:
        raise ValueError(f"{path}: its YAML aliases expand to more than {MAX_VALUES} values; "
                         "write the options out")
    return values


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
            if integer(1)(key, value) != VERSION:
                raise ValueError(f"version: this plugin reads low-rank config version {VERSION}, got {value}")
        elif key in SECTIONS:
            if dataclasses.is_dataclass(value) and isinstance(value, SECTIONS[key]):
                value = dataclasses.asdict(value)
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected a mapping of options, got {got(value)}")
            known = [f.name for f in dataclasses.fields(SECTIONS[key])]
            for name, v in value.items():
                if name not in known:
                    raise ValueError(f"unknown option {key}.{name_of(name)}; known in {key}: "
                                     f"{', '.join(known)}")
                put((key, name), f"{key}.{name}", v)
        elif isinstance(key, str) and key in FLAT_KEYS:
            put(FLAT_KEYS[key], key, value)
        elif isinstance(key, str) and key in _REMOVED:
            raise ValueError(f"{key}: this option was removed ({_REMOVED[key]}); delete the key")
        else:
            raise ValueError(f"unknown low-rank config key {short_repr(key)}; known: "
                             f"{', '.join(['version'] + list(SECTIONS) + sorted(FLAT_KEYS))}")
    return sections, labels
