"""Checks of single option values: ``check(key, value) -> value``, or a one-line
ValueError naming the key that quotes at most ~200 characters of the bad value."""

import math
import re
import reprlib
from typing import Callable, Dict, Sequence

MAX_QUOTED = 200
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 3, 8, 8, 8
_REPR.maxstring = _REPR.maxother = MAX_QUOTED


def short_repr(value) -> str:
    """``repr(value)`` cut to about ``MAX_QUOTED`` characters, never expanding nested YAML aliases."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."


def name_of(value) -> str:
    """A key as written when it is a short one-line string, else its short repr."""
    if isinstance(value, str) and len(value) <= MAX_QUOTED and value.isprintable():
        return value
    return short_repr(value)


def got(value) -> str:
    return f"the string {short_repr(value)}" if isinstance(value, str) else short_repr(value)


def number(lo: float, hi: float) -> Callable:
    def check(key, value):
        if isinstance(value, str):
            hint = "without quotes"
            if re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
                mantissa, exponent = re.split("[eE]", value.strip())
                hint = f"{mantissa}.0e{exponent}"
            try:
                float(value)
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {got(value)}") from None
            raise ValueError(f"{key}: expected a number, got {got(value)} (write {hint})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key}: expected a number, got {got(value)}")
        if not lo < value <= hi:
            raise ValueError(f"{key}: must be in ({lo:g}, {hi:g}], got {value!r}")
        return float(value)
    return check


def integer(minimum: int) -> Callable:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {got(value)}")
        if value < minimum:
            raise ValueError(f"{key}: must be >= {minimum}, got {value}")
        return value
    return check


def boolean(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {got(value)}")
    return value


def optional(check: Callable) -> Callable:
    return lambda key, value: None if value is None else check(key, value)


def regex(key, value):
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a regular expression (a string), got {got(value)}")
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{key}: {short_repr(value)} is not a valid regular expression ({e})") from None
    return value


def regex_list(key, value):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}: expected a list of regular expressions, got {got(value)}")
    return tuple(regex(f"{key}[{i}]", v) for i, v in enumerate(value))


def rank_pattern(key, value):
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a mapping regex -> rank, got {got(value)}")
    return {regex(key, p): integer(1)(f"{key}[{short_repr(p)}]", r) for p, r in value.items()}


def choice(options: Sequence[str]) -> Callable:
    def check(key, value):
        if value not in options:
            raise ValueError(f"{key}: must be one of {', '.join(options)}, got {got(value)}")
        return value
    return check


def expanded_size(value, limit: int) -> int:
    """Values in ``value`` once YAML aliases are expanded, counted only up to ``limit`` + 1
    (so an alias bomb costs at most ``limit`` steps)."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def positive_widths(key: str, values) -> Dict[str, int]:
    """``key``: module name -> positive integer (a rank, a width); a hand-edited entry fails in one line."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{key}: expected a mapping of module name -> integer, got {got(values)}")
    for name, width in values.items():
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{key}[{name_of(name)}]: expected a positive integer, got {got(width)}")
    return dict(values)
