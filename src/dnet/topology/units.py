"""Quantities with units, as written in topology files: "100MB/s", "2ms", "16GiB", "1.5TFLOP/s".

Every quantity is stored in base SI units: bytes, seconds, bytes/s, FLOP/s. Decimal
prefixes (k, M, G, T) are powers of 1000 and binary ones (Ki, Mi, Gi, Ti) powers of
1024, as usual for storage; bits ("Mbit/s", "Gbps") are an eighth of a byte.
"""
from __future__ import annotations

import re

from dnet.errors import ParseError

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# kind -> unit spellings (after the prefix) -> factor to the base unit
_UNITS: dict[str, dict[str, float]] = {
    "bytes": {"B": 1.0},
    "bandwidth": {"B/s": 1.0, "bit/s": 0.125, "bps": 0.125, "b/s": 0.125},
    "rate": {"FLOP/s": 1.0, "FLOPS": 1.0, "OP/s": 1.0, "OPS": 1.0},
    "time": {},  # handled by _TIME: prefixes do not apply
}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]*)\s*$")

UNIT_EXAMPLES = {"bytes": '"16GiB"', "bandwidth": '"100MB/s"', "rate": '"2.5TFLOP/s"', "time": '"2ms"'}


class UnitError(ParseError):
    """A quantity that does not parse; the topology loader adds the file and key."""


def parse_quantity(value: object, kind: str) -> float:
    """A number (already in base units) or a string with a unit of `kind` -> float in base units."""
    if isinstance(value, bool):
        raise UnitError(f"expected a {kind} such as {UNIT_EXAMPLES[kind]}, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise UnitError(f"expected a {kind} such as {UNIT_EXAMPLES[kind]}, got {value!r}")
    match = _NUMBER.match(value)
    if not match:
        raise UnitError(f"cannot read {value!r} as a {kind} (write it like {UNIT_EXAMPLES[kind]})")
    number, unit = float(match.group(1)), match.group(2)
    factor = _unit_factor(unit, kind)
    if factor is None:
        raise UnitError(f"unknown unit '{unit}' in {value!r} for a {kind} (write it like {UNIT_EXAMPLES[kind]})")
    return number * factor


def _unit_factor(unit: str, kind: str) -> float | None:
    if kind == "time":
        return _TIME.get(unit)
    for spelling, base in _UNITS[kind].items():
        if unit.endswith(spelling):
            prefix = unit[: len(unit) - len(spelling)]
            if prefix in _PREFIX:
                return _PREFIX[prefix] * base
    return None


def format_quantity(value: float, kind: str, digits: int = 4) -> str:
    """The inverse of parse_quantity, readable: 16 GiB -> "16GiB", 1.2e8 B/s -> "120MB/s".
    `digits` significant digits (12 keeps a round trip through a file exact to 1e-12)."""
    if kind == "time":
        for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
            if value >= factor or unit == "ns":
                return f"{_num(value / factor, digits)}{unit}"
    if kind == "bytes":
        for prefix in ("Ti", "Gi", "Mi", "Ki", ""):
            if value >= _PREFIX[prefix] or prefix == "":
                return f"{_num(value / _PREFIX[prefix], digits)}{prefix}B"
    suffix = {"bandwidth": "B/s", "rate": "FLOP/s"}[kind]
    for prefix in ("P", "T", "G", "M", "k", ""):
        if value >= _PREFIX[prefix] or prefix == "":
            return f"{_num(value / _PREFIX[prefix], digits)}{prefix}{suffix}"
    raise AssertionError(kind)


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}g}"
