"""From what the user typed (``demo``, a catalog key, a folder, a hub id) to a local model folder.

``resolve_model`` is the one resolver: training, chat, evaluation and export all call it (directly or
through ``core.train.backends.resolve_model_path``). The order is explicit, first match wins:

    1. ``demo``                 the tiny offline model (built on first use)
    2. an existing folder       used as it is, after checking it is a usable Qwen3 model
    3. a catalog key            ``qwen3-1.7b`` (any case, or its display name ``Qwen3-1.7B``)
    4. a hub id                 ``owner/name``
    5. otherwise                an error naming the closest catalog key and listing them all

A catalog key with a dot (``qwen3-0.6b``) is a name, never a file suffix. The catalog key + method + quant +
hub pick the repository (:func:`repo_id_for`); the repository lives in the models folder as
``<models dir>/<hub>/<owner>/<name>`` (plain files, resumable). A complete copy from the other hub,
or one already in Hugging Face's own cache, is used instead of downloading again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.choices import DOWNLOAD_QUANTS, METHODS
from core.models.errors import CheckpointMissing, InvalidModelFolder, ModelError, NotDownloaded, UnknownModel
from core.models.hubs import HUB_NAMES, check_hub, other_hub
from core.models.paths import DEMO_MARKER, MARKER, MODELS_DIR_HELP, cache_root, models_dir, repo_dir

__all__ = ["MARKER", "MODELS_DIR_HELP", "ModelRef", "catalog", "catalog_entry", "checkpoint_kind", "find_local",
           "is_repo_id", "models_dir", "parse_ref", "repo_dir", "repo_id_for", "resolve_model"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text.strip())) and ".." not in text


def catalog():
    from core.hardware.catalog import load_catalog

    return load_catalog()


def catalog_entry(name: str):
    """The catalog entry for a key like ``qwen3-8b`` (any case, also its display name), or None."""
    key = name.strip().lower()
    entries = catalog()
    if key in entries:
        return entries[key]
    for entry in entries.values():
        if entry.display.lower() == key:
            return entry
    return None


def checkpoint_kind(entry, method: str, quant: str) -> str:
    """'original' | 'dynamic4' | 'bnb4': which checkpoint ``method`` + ``quant`` train from."""
    if method not in METHODS:
        raise ModelError(f"unknown method {method!r}; choose one of {list(METHODS)}", where="model.method")
    if quant not in DOWNLOAD_QUANTS:
        raise ModelError(f"unknown quant {quant!r}; choose one of {list(DOWNLOAD_QUANTS)}", where="model.quant")
    if method == "lora" or quant in ("nf4", "none"):
        return "original"  # LoRA trains on 16-bit weights; nf4 quantizes them while loading
    if quant == "auto":
        return "bnb4" if entry.is_moe else "dynamic4"
    return quant


def repo_id_for(key: str, method: str = "qlora", quant: str = "auto", hub: str = "hf") -> str:
    """The repository id of catalog model ``key`` for this method, quant and hub."""
    check_hub(hub)
    entry = catalog_entry(key)
    if entry is None:
        raise UnknownModel(f"{key!r} is not in the model catalog; known: {', '.join(catalog())}",
                           where="model.name_or_path")
    kind = checkpoint_kind(entry, method, quant)
    repo = entry.repo(hub, kind)
    if repo:
        return repo
    if kind == "dynamic4" and entry.is_moe:
        raise CheckpointMissing(
            f"{entry.key} is a mixture-of-experts model: Unsloth publishes no dynamic 4-bit checkpoint "
            f"for fine-tuning it.", "Use quant 'auto' or 'bnb4' (plain 4-bit), or 'nf4' (quantize the "
            "16-bit weights while loading).", where="model.quant")
    other = other_hub(hub)
    hint = (f"{HUB_NAMES[other]} has it as {entry.repo(other, kind)} (use hub '{other}')."
            if entry.repo(other, kind) else "Choose another quant.")
    raise CheckpointMissing(f"{entry.key} has no {kind} checkpoint on {HUB_NAMES[hub]}.", hint,
                            where="model.quant")


@dataclass(frozen=True)
class ModelRef:
    """What a name_or_path string means, without touching the network."""

    kind: str  # "demo" | "folder" | "catalog" | "repo"
    text: str
    repo_id: str = ""
    hub: str = "hf"
    key: str = ""  # catalog key, when kind == "catalog"
    checkpoint: str = ""  # original | dynamic4 | bnb4, when kind == "catalog"


def parse_ref(name_or_path: str, *, method: str = "qlora", quant: str = "auto", hub: str = "hf") -> ModelRef:
    from core.demo import is_demo

    text = (name_or_path or "").strip()
    check_hub(hub)
    if not text:
        raise UnknownModel("no model chosen: give a catalog key (e.g. qwen3-8b), a model folder, a hub id "
                           "or 'demo'", where="model.name_or_path")
    if is_demo(text):
        return ModelRef("demo", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelRef("folder", str(path.resolve()))
    entry = catalog_entry(text)
    if entry is not None:
        return ModelRef("catalog", text, repo_id_for(entry.key, method, quant, hub), hub, entry.key,
                        checkpoint_kind(entry, method, quant))
    if is_repo_id(text) and not text.startswith((".", "~")):
        return ModelRef("repo", text, text, hub)
    if path.is_absolute() or text.startswith((".", "~")) or os.sep in text:
        raise UnknownModel(f"model folder not found: {path}", where="model.name_or_path")
    import difflib

    keys = list(catalog())
    close = difflib.get_close_matches(text.lower(), keys, n=1, cutoff=0.75)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise UnknownModel(f"{text!r} is not a model folder, catalog key or hub id (owner/name).{hint} "
                       f"Catalog keys: {', '.join(keys)}", where="model.name_or_path")


def _complete(folder: Path) -> bool:
    """A download QwenTune finished (marker written after every file arrived and was checked)."""
    return (folder / MARKER).is_file()


def _usable(folder: Path) -> bool:
    from core.models.local import check_model_dir

    return folder.is_dir() and check_model_dir(folder).ok


def find_local(ref: ModelRef, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """An existing complete local copy of ``ref``'s repository, looking in every known place."""
    if ref.kind == "folder":
        return Path(ref.text)
    if ref.kind == "demo":
        from core.demo import recipe_hash

        path = cache_root() / f"demo-model-{recipe_hash()}"
        return path if (path / DEMO_MARKER).is_file() else None
    candidates = [(ref.repo_id, ref.hub)]
    other = other_hub(ref.hub)
    if ref.kind == "catalog":
        entry = catalog_entry(ref.key)
        other_id = entry.repo(other, ref.checkpoint) if entry else None
        if other_id:
            candidates.append((other_id, other))
    else:
        candidates.append((ref.repo_id, other))  # both hubs mirror most Qwen / Unsloth repos by name
    for repo_id, hub in candidates:
        folder = repo_dir(repo_id, hub, cache_dir)
        if _complete(folder) and _usable(folder):
            return folder
    from core.models.local import hf_cache_snapshot, modelscope_cache_snapshot

    # Copies that huggingface-cli / modelscope download already put in the hubs' own caches.
    for repo_id, hub in candidates:
        snap = hf_cache_snapshot(repo_id) if hub == "hf" else modelscope_cache_snapshot(repo_id)
        if snap is not None and _usable(snap):
            return snap
    return None


def alternative_command(ref: ModelRef, method: str, quant: str) -> str:
    """The `models get` command for the other hub, for error messages."""
    other = other_hub(ref.hub)
    if ref.kind == "catalog":
        entry = catalog_entry(ref.key)
        other_id = entry.repo(other, ref.checkpoint) if entry else None
        if not other_id:
            return ""
        quant_flag = "none" if ref.checkpoint == "original" else ref.checkpoint
        return f"python -m core models get {ref.key} --hub {other} --quant {quant_flag}  (repository {other_id})"
    if ref.kind == "repo":
        return f"python -m core models get {ref.repo_id} --hub {other}"
    return ""


def resolve_model(name_or_path: str, *, method: str = "qlora", quant: str = "auto", hub: str = "hf",
                  cache_dir: str | os.PathLike | None = None, download: bool = True,
                  progress=None) -> str:
    """A local folder holding the model ``name_or_path`` names, downloading it if allowed.

    ``progress`` (optional) receives :class:`core.models.download.DownloadProgress` updates; without
    it a download prints a line to stderr every few seconds.
    """
    ref = parse_ref(name_or_path, method=method, quant=quant, hub=hub)
    if ref.kind == "demo":
        from core.demo import ensure_demo_model

        return str(ensure_demo_model())
    if ref.kind == "folder":
        from core.models.local import check_model_dir

        check = check_model_dir(ref.text)
        if not check.ok:
            raise InvalidModelFolder(ref.text, check.problems)
        return ref.text
    found = find_local(ref, cache_dir)
    if found is not None:
        return str(found)
    if not download:
        flags = f" --hub {ref.hub}"
        if ref.kind == "catalog":
            flags += f" --method {method} --quant {quant}"
        raise NotDownloaded(f"{ref.repo_id} ({HUB_NAMES[ref.hub]}) is not downloaded yet.",
                            f"Download it with: python -m core models get {ref.key or ref.repo_id}{flags}",
                            where="model.name_or_path")
    from core.models.download import download_repo, stderr_reporter

    path = download_repo(ref.repo_id, ref.hub, repo_dir(ref.repo_id, ref.hub, cache_dir),
                         progress=progress or stderr_reporter(), alternative=alternative_command(ref, method, quant))
    return str(path)
