"""The one error type for bad input: it names the field, the rule and the offending value."""

from __future__ import annotations

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
