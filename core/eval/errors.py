"""The evaluation's error, in a leaf module so the evaluation and its EvalScope hook both raise it
without importing each other."""

from __future__ import annotations

from core.settings import ConfigError


class EvalError(ConfigError):
    """An evaluation that cannot run as asked (no run folder, no saved mix, ...)."""
