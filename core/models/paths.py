"""Where QwenTune keeps models on disk: the cache root, the models folder, the download marker.

A leaf module: it imports nothing of QwenTune's, so every other module of the models area (and
core.demo) can use these names without importing one another.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "QWENTUNE_CACHE"
MODELS_DIR_ENV = "QWENTUNE_MODELS_DIR"
MODELS_DIR_HELP = (f"Folder that holds downloaded models (default: <cache>/models, where <cache> is "
                   f"${CACHE_ENV} or ~/.cache/qwentune; ${MODELS_DIR_ENV} overrides it).")
# Written into a download's folder after every file arrived and was checked: a folder without it
# is an unfinished download (it resumes).
MARKER = ".qwentune_download.json"
DEMO_MARKER = "qwentune_demo.json"
REGISTRY_NAME = "local_models.json"
JOBS_DIR_NAME = "jobs"


def cache_root() -> Path:
    """$QWENTUNE_CACHE, else $XDG_CACHE_HOME/qwentune, else ~/.cache/qwentune."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "qwentune"


def models_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The models folder: the argument, else $QWENTUNE_MODELS_DIR, else <cache root>/models."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(MODELS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return cache_root() / "models"


def repo_dir(repo_id: str, hub: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``repo_id`` from ``hub`` is (or will be) stored: <models dir>/<hub>/<owner>/<name>."""
    owner, name = repo_id.split("/", 1)
    return models_dir(cache_dir) / hub / owner / name


def registry_path() -> Path:
    """The list of model folders the user added (``python -m core models add PATH``)."""
    return cache_root() / REGISTRY_NAME


def jobs_dir() -> Path:
    """Records and logs of the downloads the GUI started (<cache root>/jobs), so a restarted web
    server finds a running download again instead of starting a second one on the same files."""
    return cache_root() / JOBS_DIR_NAME
