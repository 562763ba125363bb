"""Plain-text formatting shared by the CLI, the worker's log and the GUI."""

from __future__ import annotations


def duration(seconds, *, none: str = "?", sep: str = "") -> str:
    """3725 -> "1h02m" (sep=" ": "1h 02m"); 75 -> "1m15s"; None, NaN or infinity -> ``none``.

    The one duration format of the CLI, the logs and the GUI (ETAs, elapsed times, downloads)."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return none
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{sep}{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{sep}{seconds % 60:02d}s"
    return f"{seconds}s"


def number(value, *, none: str = "-") -> str:
    """Four significant digits for floats, as-is for the rest; None -> ``none``."""
    if value is None:
        return none
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
