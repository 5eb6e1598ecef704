"""Parse filter expressions (``category=dress``, ``colour=red|blue``, ``price<=50``).

One syntax for the CLI, query strings and the dashboard, translated to the index's
``PayloadFilter``. The parser is a single left-to-right scan (no backtracking regular
expression), and every expression is bounded in count and length, so no input can make
parsing cost more than linear time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from services.errors import InvalidFilter
from services.index.base import PayloadFilter, PayloadValue, Range

MAX_EXPRESSIONS = 32
MAX_EXPRESSION_CHARS = 512
MAX_ALTERNATIVES = 64
INT64 = (-(2**63), 2**63 - 1)
_OPERATORS = ("<=", ">=", "!=", "=", "<", ">")  # two-character ones first
_KEY_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_KEY_CHARS = _KEY_START | frozenset("0123456789-.")  # a dotted path: tags.colour
_SYNTAX = "use key=value, key=a|b, key!=value, key<=number, key>=number, key<number or key>number"


def _is_int(raw: str) -> bool:
    digits = raw[1:] if raw.startswith("-") else raw
    return digits.isascii() and digits.isdigit() and (digits == "0" or digits[0] != "0")


def _is_decimal(raw: str) -> bool:
    whole, dot, frac = raw.partition(".")
    return bool(dot) and _is_int(whole or "0") and frac.isascii() and frac.isdigit()


def _number(expr: str, raw: str) -> float:
    """A finite number, or InvalidFilter quoting the expression."""
    try:
        value = float(raw) if raw.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidFilter(f"filter {expr!r}: {raw!r} is not a number")
    return value


def parse_value(raw: str) -> PayloadValue:
    """Typed value: ``"quoted"`` is a string, plain integers an int, ``true``/``false`` (any
    case) a boolean, anything else a string.

    Raises:
        InvalidFilter: an integer outside the 64-bit range the index stores.
    """
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if _is_int(raw):
        value = int(raw)
        if not INT64[0] <= value <= INT64[1]:
            raise InvalidFilter(f"{raw} is outside the 64-bit integer range of stored numbers")
        return value
    if raw.lower() in ("true", "false"):  # spreadsheets write TRUE, Python True
        return raw.lower() == "true"
    return raw


def _split(expr: str) -> tuple[str, str, str]:
    """``key``, operator and raw value of one expression, in one pass."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise InvalidFilter(f"a filter is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expr.strip()
    end = 0
    while end < len(text) and text[end] in _KEY_CHARS:
        end += 1
    key = text[:end]
    rest = text[end:].lstrip()
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    segments = key.split(".")
    if op is None or not all(s and s[0] in _KEY_START for s in segments):
        raise InvalidFilter(f"cannot parse filter {expr!r}; {_SYNTAX}")
    value = rest[len(op) :].strip()
    if not value:
        raise InvalidFilter(f"filter {expr!r} has no value; {_SYNTAX}")
    return key, op, value


def parse_filters(expressions: Iterable[str]) -> PayloadFilter:
    """Build a filter from expressions that must all hold.

    ``price=28.85`` (a decimal) matches that number exactly; plain integers compare as
    numbers; ``in_stock=true`` matches the boolean; ``sku="007"`` and ``flag="true"`` force
    a string; ``a|b`` alternatives keep each one's type.

    Raises:
        InvalidFilter: an expression is malformed or over a limit; the message quotes it.
    """
    exprs = list(expressions)
    if len(exprs) > MAX_EXPRESSIONS:
        raise InvalidFilter(f"at most {MAX_EXPRESSIONS} filters, got {len(exprs)}")
    equals: dict[str, PayloadValue] = {}
    any_of: dict[str, list[PayloadValue]] = {}
    not_equals: dict[str, PayloadValue] = {}
    bounds: dict[str, dict[str, float]] = {}
    for expr in exprs:
        key, op, raw = _split(expr)
        if op in ("<", "<=", ">", ">="):
            name = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[op]
            bounds.setdefault(key, {})[name] = _number(expr, raw)
        elif op == "!=":
            not_equals[key] = _value(expr, raw)
        elif "|" in raw:
            parts = raw.split("|")
            if len(parts) > MAX_ALTERNATIVES:
                raise InvalidFilter(f"filter {expr!r}: at most {MAX_ALTERNATIVES} alternatives")
            any_of[key] = [_value(expr, v.strip()) for v in parts]
        elif _is_decimal(raw):
            number = _number(expr, raw)
            bounds.setdefault(key, {}).update(gte=number, lte=number)
        else:
            equals[key] = _value(expr, raw)
    ranges = {key: Range(**b) for key, b in bounds.items()}
    return PayloadFilter(equals=equals, any_of=any_of, ranges=ranges, not_equals=not_equals)


def _value(expr: str, raw: str) -> PayloadValue:
    try:
        return parse_value(raw)
    except InvalidFilter as e:
        raise InvalidFilter(f"filter {expr!r}: {e}") from e
