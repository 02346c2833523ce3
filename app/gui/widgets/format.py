"""Display formatting shared by the dashboard widgets (pure functions, any thread)."""

from __future__ import annotations

import math


def duration(seconds: float | None) -> str:
    """``3725`` → ``1h 02m 05s``; None → an em dash."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def gigabytes(value: float | None, total: float | None = None) -> str:
    if value is None:
        return "—"
    if total:
        return f"{value:.2f} / {total:.2f} GiB"
    return f"{value:.2f} GiB"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.0f} %"


def millis(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def text(value: object) -> str:
    return "—" if value is None or value == "" else str(value)
