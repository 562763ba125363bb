"""Errors of the models area. Each names what is wrong and what to do about it.

They subclass :class:`core.settings.ConfigError`, so the CLI prints them as ``error: ...`` and the
trainer can store ``reason`` and ``advice`` in a run's status.json.
"""

from __future__ import annotations

from core.settings import ConfigError


class ModelError(ConfigError):
    """A model could not be resolved, checked or downloaded. ``advice`` says what to do next."""

    kind = "model"

    def __init__(self, message: str, advice: str = "", where: str = ""):
        super().__init__(message, where, advice=advice)


class UnknownModel(ModelError):
    """Not a folder, catalog key or hub repository id."""


class CheckpointMissing(ModelError):
    """The catalog has no checkpoint of this kind (e.g. dynamic 4-bit of an MoE model)."""


class InvalidModelFolder(ModelError):
    """A local folder is not a usable Qwen3 causal LM; ``problems`` lists every reason."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path} is not a usable Qwen3 model:\n{lines}")


class NotDownloaded(ModelError):
    """The model is not on disk and downloading was not allowed."""


class HubUnreachable(ModelError):
    """The hub could not be reached (offline, DNS, proxy, timeout)."""

    kind = "network"


class RepoNotFound(ModelError):
    """The repository does not exist on that hub (or is private)."""


class RepoGated(ModelError):
    """The repository needs a token or an accepted licence."""


class NotEnoughDisk(ModelError):
    """The download will not fit on the disk."""

    kind = "resource"


class DownloadFailed(ModelError):
    """The hub client failed for another reason."""

    kind = "network"


class MissingPackage(ModelError):
    """An optional package (modelscope) is not installed."""

    kind = "config"
