"""Numbers and sentences as the report prints them.

One place decides how a percentage, an epsilon, a byte count or a time is written, so
report.html, report.json's plain-language statements and the tests agree. Everything here is
pure (no I/O, no plotting) so each rule is checked against hand-written cases. The sentences
about privacy that use these numbers are `server/report/privacy_text.py`'s.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN/Inf were stored as null, but be safe."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def pct(value: Any, digits: int = 1) -> str:
    """0.8123 -> '81.2%'; missing -> 'n/a'."""
    return f"{100 * float(value):.{digits}f}%" if is_number(value) else "n/a"


def num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if is_number(value) else "n/a"


def eps(value: Any) -> str:
    """A privacy loss epsilon, to three decimals: as the sites log it, and precise enough that a
    spend just under the budget (7.996 of 8) is never printed as the budget itself."""
    return f"{float(value):.3f}" if is_number(value) else "n/a"


def spent_percent(fraction: float) -> str:
    """Share of a budget spent, rounded DOWN to 0.1% below 100% so 'under budget' never reads as '100%'."""
    value = 100.0 * fraction
    if value < 100.0:
        value = math.floor(value * 10) / 10
    return f"{value:.1f}%"


def short(value: Any) -> str:
    """Budgets and deltas as people write them: 8 -> '8', 1e-05 -> '1e-05', 0.5 -> '0.5'."""
    return f"{float(value):g}" if is_number(value) else "n/a"


def bytes_text(value: Any) -> str:
    """Binary units, as the README quotes sizes: 51984 -> '50.8 KiB'."""
    if not is_number(value):
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def timestamp(value: Any) -> str:
    """Seconds since the epoch -> '2025-11-25 03:58:45 UTC' (UTC so sites in any zone agree)."""
    if not is_number(value):
        return "n/a"
    return datetime.fromtimestamp(float(value), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: Any) -> str:
    """77.1 -> '1 min 17 s'; 3725 -> '1 h 02 min'."""
    if not is_number(seconds) or seconds < 0:
        return "n/a"
    total = int(round(float(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def round_list(rounds: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5': compact, for sentences and tables."""
    if not rounds:
        return "none"
    values = sorted(set(int(r) for r in rounds))
    parts: list[str] = []
    start = prev = values[0]
    for value in values[1:] + [None]:  # type: ignore[list-item]
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)


def budget_fraction(epsilon: Any, budget: Any) -> float | None:
    """Share of the budget spent, for the budget bar (may exceed 1: the report shows it, never hides it)."""
    if not (is_number(epsilon) and is_number(budget)) or float(budget) <= 0:
        return None
    return float(epsilon) / float(budget)


