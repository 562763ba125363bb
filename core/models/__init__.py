"""Qwen3 models: catalog key -> hub repository -> local folder; downloads; the local-models list.

Importing this package is cheap: the hub clients load only when a download or hub query starts.
"""

from core.models.errors import (
    CheckpointMissing,
    DownloadFailed,
    HubUnreachable,
    InvalidModelFolder,
    MissingPackage,
    ModelError,
    NotDownloaded,
    NotEnoughDisk,
    RepoGated,
    RepoNotFound,
    UnknownModel,
)
from core.models.resolve import (
    find_local,
    models_dir,
    parse_ref,
    repo_dir,
    repo_id_for,
    resolve_model,
)

__all__ = [
    "CheckpointMissing", "DownloadFailed", "HubUnreachable", "InvalidModelFolder", "MissingPackage",
    "ModelError", "NotDownloaded", "NotEnoughDisk", "RepoGated", "RepoNotFound", "UnknownModel",
    "find_local", "models_dir", "parse_ref", "repo_dir", "repo_id_for", "resolve_model",
    "local_path_for",
]


def local_path_for(name_or_path: str, *, method: str = "qlora", quant: str = "auto", hub: str = "hf",
                   cache_dir=None) -> str | None:
    """The local folder for this choice if it is already on disk (no network, no building), else None.

    For the GUI's "is the chosen model downloaded?" and for commands that must not download.
    Raises ModelError when the name itself is wrong (unknown key, missing folder).
    """
    ref = parse_ref(name_or_path, method=method, quant=quant, hub=hub)
    found = find_local(ref, cache_dir)
    return str(found) if found is not None else None
