"""Parse filter expressions (``category=dress``, ``colour=red|blue``, ``price<=50``).

One syntax for the CLI and query strings, translated to the index's ``PayloadFilter``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from services.errors import InvalidFilter
from services.index.base import PayloadFilter, PayloadValue, Range

_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")
_INT = re.compile(r"^-?(0|[1-9][0-9]*)$")


def parse_value(raw: str) -> PayloadValue:
    """Typed value: ``"quoted"`` is a string, plain integers an int, anything else a string."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if _INT.match(raw):
        return int(raw)
    return raw


def parse_filters(expressions: Iterable[str]) -> PayloadFilter:
    """Build a filter from expressions that must all hold.

    Raises:
        InvalidFilter: an expression is malformed; the message quotes it.
    """
    equals: dict[str, PayloadValue] = {}
    any_of: dict[str, list[str] | list[int]] = {}
    not_equals: dict[str, PayloadValue] = {}
    bounds: dict[str, dict[str, float]] = {}
    for expr in expressions:
        m = _EXPR.match(expr)
        if not m or m.group(3) == "":
            raise InvalidFilter(
                f"cannot parse filter {expr!r}; use key=value, key=a|b, key!=value, "
                "key<=number, key>=number, key<number or key>number"
            )
        key, op, raw = m.groups()
        if op in ("<", "<=", ">", ">="):
            try:
                number = float(raw)
            except ValueError as e:
                raise InvalidFilter(f"filter {expr!r}: {raw!r} is not a number") from e
            name = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[op]
            bounds.setdefault(key, {})[name] = number
        elif op == "!=":
            not_equals[key] = parse_value(raw)
        elif "|" in raw:
            values = [parse_value(v.strip()) for v in raw.split("|")]
            if all(isinstance(v, int) for v in values):
                any_of[key] = [int(v) for v in values]
            else:
                any_of[key] = [str(v) for v in values]
        else:
            equals[key] = parse_value(raw)
    ranges = {key: Range(**b) for key, b in bounds.items()}
    return PayloadFilter(equals=equals, any_of=any_of, ranges=ranges, not_equals=not_equals)
