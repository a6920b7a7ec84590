"""Method options in five frozen sections, checked when made and so valid for a config's whole life,
read from a ``--lowrank_config`` YAML by section or by the flat keys of older files. A bad value is
refused in one line naming the key; YAML reads ``1e-4`` as a string, which is never taken for a number.
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


def _option(default, check: Callable):
    """A field whose value ``check(key, value)`` checks and normalizes (e.g. ints to floats)."""
    return field(default=default, metadata={"check": check})


class _Section:
    """A frozen group of options, each checked when the group is made."""

    def __post_init__(self):
        section = _SECTION_NAME[type(self)]
        for f in dataclasses.fields(self):
            value = f.metadata["check"](f"{section}.{f.name}", getattr(self, f.name))
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class Targets(_Section):
    """Which encoder layers are factored."""

    # regex (fullmatch) over encoder module names (default: the family's), and regexes of ones left dense
    target_modules: Optional[str] = _option(None, optional(regex))
    exclude_modules: Tuple[str, ...] = _option((), regex_list)
    # regex -> fixed rank, overriding θ (kept even where dense is smaller)
    rank_pattern: Dict[str, int] = field(default_factory=dict, metadata={"check": rank_pattern})


@dataclass(frozen=True)
class Ranks(_Section):
    """How ranks are chosen: θ per role, or one global FLOPs budget."""

    # explained variance kept by attention projections, and by feed-forward layers
    theta_attention: float = _option(0.99, number(0.0, 1.0))
    theta_feed_forward: float = _option(0.999, number(0.0, 1.0))
    rank_multiple: int = _option(16, integer(1))  # ranks are rounded up to a multiple of this
    # keep this fraction of the target layers' dense FLOPs, ranks allocated globally by
    # measured sensitivity (espnet_lowrank.budget); replaces θ
    budget: Optional[float] = _option(None, optional(number(0.0, 1.0)))


@dataclass(frozen=True)
class Calibration(_Section):
    num_calib: Optional[int] = _option(None, optional(integer(1)))  # use at most this many utterances
    batch_size: int = _option(4, integer(1))  # calibration (and recovery) batch size
    # calibrate layer group by layer group, in forward order, each on the already-compressed
    # earlier layers (one pass per group; θ only)
    sequential: bool = _option(False, boolean)
    seed: int = _option(0, integer(0))  # torch seed of calibration and recovery
    # fill each row with consecutive utterances up to this many seconds (calibration and recovery;
    # Whisper: 30, as long-form transcription feeds its encoder); none: one utterance per row, padded
    pack_seconds: Optional[float] = _option(None, optional(number(0.0, 3600.0)))


@dataclass(frozen=True)
class Recovery(_Section):
    # distillation steps after factoring (MSE to the dense encoder's outputs, only the factors train); 0: off
    steps: int = _option(0, integer(0))
    lr: float = _option(3e-5, number(0.0, MAX_LR))  # Adam; 3e-4 diverged on the recipe Conformer
    # what recovery matches: 'encoder' (MSE on the encoder output), 'decoder' (what the decoder reads:
    # the CTC posteriors, KL; Whisper's cross-attention keys and values, MSE) or 'decoder+tokens' (Whisper:
    # that plus the KL to the dense decoder's token distribution on the dense model's own transcripts)
    objective: str = _option("encoder", choice(RECOVERY_OBJECTIVES))
    # 'end_to_end' (the whole encoder per step) or 'block' (each encoder block in turn, from cached
    # inputs, to the dense block's output; steps per block, each matched by MSE)
    scope: str = _option("end_to_end", choice(RECOVERY_SCOPES))
    # with scope block: then this many end-to-end steps under objective (a short pass that fixes
    # what the blocks could not see); 0: none
    final_steps: int = _option(0, integer(0))
    # end-to-end steps recompute each encoder block in the backward pass instead of keeping its
    # activations: the same numbers, less memory, more time (bench/DECISIONS.md, 'recovery's memory')
    recompute_blocks: bool = _option(False, boolean)
    # from recovery on, for the rest of the process, glibc returns freed buffers of 8 MB or more to the
    # system (mallopt, as MALLOC_MMAP_THRESHOLD_=8388608 would): the same numbers, less memory, more time
    return_freed_memory: bool = _option(False, boolean)

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
    # self-attention: auto (fewer FLOPs, deterministic) | reduced | dense
    attention: str = _option("auto", choice(ATTENTION_MODES))
    # dynamic int8 at load, CPU only: the encoder's linears, and with Whisper the decoder's linears
    # and vocabulary projection (recorded in the exp dir's config.yaml)
    int8: bool = _option(False, boolean)
    # smooth the linears' inputs for int8 (SmoothQuant-style, exact in float) at the sites that give the
    # encoder output the lowest int8 error on calibration windows; Whisper only (espnet_lowrank/smoothing.py)
    int8_smoothing: bool = _option(False, boolean)


SECTIONS = {"targets": Targets, "ranks": Ranks, "calibration": Calibration,
            "recovery": Recovery, "deployment": Deployment}
_SECTION_NAME = {cls: name for name, cls in SECTIONS.items()}
# flat YAML key -> (section, field): the field's name, recovery's with a "recovery_" prefix
FLAT_KEYS: Dict[str, Tuple[str, str]] = {
    f.name: (section, f.name) for section, cls in SECTIONS.items() if section != "recovery"
    for f in dataclasses.fields(cls)}
FLAT_KEYS.update({f"recovery_{f.name}": ("recovery", f.name) for f in dataclasses.fields(Recovery)})
_REMOVED = {
    "keep_dense_if_no_savings": "a layer is always kept dense where factoring would not save",
    "refit": "the least-squares refit lost to PCA and was removed (bench/DECISIONS.md)",
    "refit_ridge": "the least-squares refit lost to PCA and was removed (bench/DECISIONS.md)",
}


@dataclass(frozen=True, init=False)
class LowRankConfig:
    """Options in five frozen sections (``config.ranks.theta_attention``), given as
    dataclasses or dicts (``LowRankConfig(ranks=Ranks(theta_attention=0.98), recovery={"steps": 100})``)
    or, as a migration, by the flat names of older YAML files (``FLAT_KEYS``)."""

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
        """Check every option and combination again (``compress`` does, before any work)."""
        for name, cls in SECTIONS.items():
            part = getattr(self, name)
            cls(**{f.name: getattr(part, f.name) for f in dataclasses.fields(cls)})

    def replace(self, **values) -> "LowRankConfig":
        """A new, checked config with ``values`` (flat keys or sections) changed."""
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
        """The flat YAML form."""
        return {"version": VERSION,
                **{flat: _plain(getattr(getattr(self, s), f)) for flat, (s, f) in FLAT_KEYS.items()}}

    def sections(self) -> dict:
        """The sectioned YAML form, ``{section: {field: value}}``."""
        return {"version": VERSION,
                **{name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
                   for name in SECTIONS}}


def _plain(value):
    """YAML-safe: tuples as lists, mappings copied."""
    if isinstance(value, tuple):
        return list(value)
    return dict(value) if isinstance(value, dict) else value


def _read_yaml_file(path: str):
    """The YAML mapping in a regular, UTF-8, non-empty file of bounded size and alias expansion."""
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
    """Per-section kwargs, and the key each option was given under (for the error messages)."""
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
