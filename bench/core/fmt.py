"""Number and name formatting, and markdown tables, shared by the gate's messages, the reports and the cross-check."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

DASH = "—"  # a cell with no value
# The report's section on diffusers' pipeline; the cross-check's output starts with it too.
DIFFUSERS_HEADING = "## diffusers Cosmos3OmniPipeline"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def fmt_ms(ms: float | None) -> str:
    """Milliseconds with precision that shrinks as the number grows: 1.23, 123.4, 28999."""
    if ms is None or not math.isfinite(ms):
        return DASH
    # Compare the rounded value, so 99.999 reads 100.0 rather than 100.00.
    if abs(round(ms, 2)) < 100:
        return f"{ms:.2f}"
    if abs(round(ms, 1)) < 10_000:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def fmt_gib(gib: float | None) -> str:
    return DASH if gib is None else f"{gib:.3f}"


def fmt_change(ratio: float | None) -> str:
    """A ratio as a signed percentage change: 1.1 -> +10.0%."""
    return DASH if ratio is None or not math.isfinite(ratio) else f"{(ratio - 1) * 100:+.1f}%"


def fmt_ratio_ci(ratio: float, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return f"{ratio:.3f}"
    return f"{ratio:.3f} [{low:.3f}, {high:.3f}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return DASH
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def fmt_share(part: float, total: float) -> str:
    return f"{part / total:.1%}" if total > 0 else DASH


def code(name: str) -> str:
    # Backticks keep the brackets and underscores of case names literal in markdown.
    return f"`{name}`"


def gpu_cells(readings: Sequence[Any]) -> tuple[str, str, str]:
    """Report cells for one side's GPU readings (bench.core.telemetry.GpuReading): SM clock range in MHz,
    the hottest reading in C, and the throttle reasons seen."""
    if not readings:
        return DASH, DASH, DASH
    sm = [r.sm_clock_mhz for r in readings]
    throttled = sorted({t for r in readings for t in r.throttled})
    return f"{min(sm)}-{max(sm)}", f"{max(r.temperature_c for r in readings)}", ", ".join(throttled) or "none"
