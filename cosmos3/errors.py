"""The one error type for bad input: it names the field, the rule and the offending value."""

from __future__ import annotations

import math
from typing import Any

_MISSING = object()


class InputError(ValueError):
    """A request, preset or file that breaks a stated rule.

    The message always reads ``<field>: <rule> (got <value>)`` so that a user
    knows which knob to turn without reading a traceback.
    """

    def __init__(self, field: str, rule: str, value: Any = _MISSING) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        got = "" if value is _MISSING else f" (got {value!r})"
        super().__init__(f"{field}: {rule}{got}")


def check_number(field: str, value: Any, *, at_least: float | None = None, above: float | None = None,
                 below: float | None = None, integer: bool = False) -> Any:
    """The one rule of every numeric option and field: a real number (bool is not one), finite, in range.

    Infinity is refused everywhere: an infinite allowance would switch a rule off, and an infinite
    requirement cannot be met (that is bad input, exit 2, never a regression). A field where infinity
    means something (an error bound where shapes differ) states that rule itself and does not use this.
    """
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InputError(field, "must be an integer" if integer else "must be a number", value)
    parts = []
    if at_least is not None:
        parts.append(f">= {at_least:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if below is not None:
        parts.append(f"< {below:g}")
    in_range = (at_least is None or value >= at_least) and (above is None or value > above) \
        and (below is None or value < below)  # False for NaN
    if not in_range:
        raise InputError(field, f"must be {' and '.join(parts)}", value)
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise InputError(field, "must be finite (an infinite limit would switch its rule off, or fail every run)",
                         value)
    return value
