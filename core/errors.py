"""The root of every error QwenTune raises on purpose: a message, advice, a place and a kind.

Each area's errors (ConfigError and DataError, the models area's ModelError family, RunError,
ExportError, EvalError, LoadError) derive from :class:`QwenTuneError` and say which ``kind`` of
problem they are. The kind decides what a run folder records when a worker ends on one (see
:func:`outcome`): whether resuming can help (a lost network comes back, a wrong setting does not)
and the advice shown when the error brings none of its own.

This module imports nothing of ours, so every other module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("config", "data", "network", "model", "run", "resource")

# Whether running the same thing again can succeed without changing anything, per kind.
RESUMABLE = {"config": False, "data": False, "network": True, "model": False, "run": True, "resource": True}

DEFAULT_ADVICE = {
    "config": "Fix the setting named in the error and start a new run.",
    "data": "Fix the data file named in the error (or leave that source out) and start a new run.",
    "network": "Check the network connection (or the hub mirror) and resume; files already "
               "downloaded are kept.",
    "model": "Choose another model, or fix the model folder named in the error, and start a new run.",
    "run": "See train.log; resume continues from the newest checkpoint.",
    "resource": "Free the resource named in the error and resume; the newest checkpoint is kept.",
}


class QwenTuneError(Exception):
    """An expected failure: shown to the user as ``error: message`` plus advice, never a traceback.

    ``message`` says what is wrong, ``advice`` what to do about it, ``where`` the setting, file or
    run it concerns. Subclasses set ``kind`` (one of :data:`KINDS`); ``kind=`` overrides it per error.
    """

    kind = "run"

    def __init__(self, message: str, advice: str = "", where: str = "", *, kind: str | None = None):
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"error kind must be one of {KINDS}, got {kind!r}")
            self.kind = kind
        self.message = message
        self.advice = advice
        self.where = where
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}\n{self.advice}" if self.advice else text

    def at(self, where: str) -> QwenTuneError:
        """This error, now naming ``where`` (a setting or file found out by the caller)."""
        self.where = where
        self.args = (self._text(),)
        return self

    @property
    def reason(self) -> str:
        """The message alone (without the place and the advice)."""
        return self.message

    @reason.setter
    def reason(self, value: str) -> None:
        self.message = value


@dataclass(frozen=True)
class Outcome:
    """What a worker records about an error it ends on."""

    kind: str
    error: str
    advice: str
    resumable: bool


def outcome(exc: BaseException) -> Outcome:
    """The kind, error text, advice and resumability of ``exc`` as status.json should hold them.

    A :class:`QwenTuneError` keeps its own advice (else its kind's default); anything else is an
    unexpected failure of the run itself, kind ``run``, whose traceback is in the log.
    """
    if isinstance(exc, QwenTuneError):
        kind = exc.kind if exc.kind in KINDS else "run"
        text = str(exc)
        if exc.advice and text.endswith("\n" + exc.advice):
            text = text[: -len(exc.advice) - 1]
        return Outcome(kind, text, exc.advice or DEFAULT_ADVICE[kind], RESUMABLE[kind])
    if isinstance(exc, MemoryError):
        return Outcome("resource", "MemoryError: the machine ran out of RAM",
                       "Close other programs or lower train.micro_batch, then resume.", True)
    return Outcome("run", f"{type(exc).__name__}: {str(exc)[:2000]}", "See train.log for the full traceback.",
                   True)
