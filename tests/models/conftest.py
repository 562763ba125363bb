"""Fixtures for the models area: an isolated cache, copies of the demo model, a mocked hub client.

Every test runs with its own cache root, models folder, Hugging Face / ModelScope caches and login
homes (all under tmp_path), and without tokens unless it sets one, so nothing here reads or writes
the user's real caches. The demo model is symlinked into the isolated cache (it is not rebuilt).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, demo_model_path):
    from core.demo import recipe_hash

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"demo-model-{recipe_hash()}").symlink_to(demo_model_path, target_is_directory=True)
    env = {
        "QWENTUNE_CACHE": cache,
        "HF_HOME": tmp_path / "hf-home",
        "HF_HUB_CACHE": tmp_path / "hf-home" / "hub",
        "MODELSCOPE_CACHE": tmp_path / "ms-cache",
        "MODELSCOPE_HOME": tmp_path / "ms-home",
    }
    from core.models.hubs import CLIENT_TIMEOUT_ENV

    # Downloads set these with os.environ.setdefault; setting them here restores them after each test.
    env.update(CLIENT_TIMEOUT_ENV)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    for name in (*TOKEN_VARS, "QWENTUNE_MODELS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                 "MODELSCOPE_ENDPOINT", "HF_TOKEN_PATH", "MODELSCOPE_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    return SimpleNamespace(cache=cache, models=cache / "models", tmp=tmp_path)


@pytest.fixture
def model_copy(tmp_path, demo_model_path):
    """A fresh copy of the demo model to damage; call it with a folder name."""

    def make(name: str = "model") -> Path:
        dest = tmp_path / "copies" / name
        shutil.copytree(demo_model_path, dest)
        return dest

    return make


def sharded_copy(src: Path, dest: Path, shards: int = 3) -> Path:
    """The demo model re-saved as ``shards`` safetensors files with an index, like big models."""
    import json

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = {n: tensors[n] for n in names[i::shards]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(dest / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(v.nbytes for v in tensors.values())
    (dest / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}), encoding="utf-8")
    return dest


class FakeClients:
    """Replaces the hub clients at their boundary (HfApi.model_info, snapshot_download and
    modelscope_hub.HubApi's list_repo_files, download_repo) with functions that serve repositories
    from local folders."""

    def __init__(self, monkeypatch, repos: dict[tuple[str, str], Path]):
        self.repos = repos
        self.calls: list[tuple[str, str, dict]] = []
        self.chunk = 64 * 1024
        self.delay = 0.0  # seconds per chunk, to make progress observable
        self.fail_list: BaseException | None = None
        self.fail_snapshot: BaseException | None = None
        self.stop_after_bytes: int | None = None  # simulate a dropped connection mid-download
        import huggingface_hub
        import modelscope_hub

        def method(bound):  # a plain function, so the client instance is passed as on the real method
            return lambda api_self, *args, **kwargs: bound(api_self, *args, **kwargs)

        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", method(self._hf_model_info))
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self._hf_snapshot)
        monkeypatch.setattr(modelscope_hub.HubApi, "list_repo_files", method(self._ms_files))
        monkeypatch.setattr(modelscope_hub.HubApi, "download_repo", method(self._ms_snapshot))
        monkeypatch.setattr("core.models.hubs.probe", lambda hub, timeout=0: None)

    def files(self, hub: str, repo_id: str) -> list[Path]:
        root = self.repos[(hub, repo_id)]
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _lookup(self, hub: str, repo_id: str) -> Path:
        if (hub, repo_id) not in self.repos:
            raise self._not_found(hub, repo_id)
        return self.repos[(hub, repo_id)]

    @staticmethod
    def _not_found(hub: str, repo_id: str) -> BaseException:
        if hub == "hf":
            import httpx
            from huggingface_hub.errors import RepositoryNotFoundError

            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            return RepositoryNotFoundError("404 Repository Not Found",
                                           response=httpx.Response(404, request=request))
        from modelscope_hub.errors import NotExistError

        return NotExistError(f"model {repo_id} does not exist")

    # Hugging Face
    def _hf_model_info(self, api_self, repo_id, *args, **kwargs):
        self.calls.append(("hf", "model_info", {"repo_id": repo_id, **kwargs}))
        if self.fail_list is not None:
            raise self.fail_list
        root = self._lookup("hf", repo_id)
        siblings = [SimpleNamespace(rfilename=str(p.relative_to(root)), size=p.stat().st_size)
                    for p in self.files("hf", repo_id)]
        return SimpleNamespace(sha="c0ffee", siblings=siblings)

    def _hf_snapshot(self, repo_id, **kwargs):
        self.calls.append(("hf", "snapshot_download", {"repo_id": repo_id, **kwargs}))
        return self._copy("hf", repo_id, kwargs["local_dir"], kwargs.get("ignore_patterns"))

    # ModelScope
    def _ms_files(self, api_self, repo_id, repo_type, **kwargs):
        self.calls.append(("modelscope", "list_repo_files", {"repo_id": repo_id, **kwargs}))
        if self.fail_list is not None:
            raise self.fail_list
        root = self._lookup("modelscope", repo_id)
        return [SimpleNamespace(path=str(p.relative_to(root)), size=p.stat().st_size, type="blob")
                for p in self.files("modelscope", repo_id)]

    def _ms_snapshot(self, api_self, repo_id, repo_type, **kwargs):
        self.calls.append(("modelscope", "download_repo", {"repo_id": repo_id, **kwargs}))
        return Path(self._copy("modelscope", repo_id, kwargs["local_dir"], kwargs.get("ignore_patterns")))

    def _copy(self, hub: str, repo_id: str, local_dir: str, ignore) -> str:
        """Write each file in chunks through a .incomplete file, as the real clients do."""
        import fnmatch

        if self.fail_snapshot is not None:
            raise self.fail_snapshot
        root = self._lookup(hub, repo_id)
        dest = Path(local_dir)
        written = 0
        for src in self.files(hub, repo_id):
            rel = str(src.relative_to(root))
            if ignore and any(fnmatch.fnmatch(rel, pat) for pat in ignore):
                continue
            target = dest / rel
            if target.is_file() and target.stat().st_size == src.stat().st_size:
                continue  # resume: complete files are skipped
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".incomplete")
            data = src.read_bytes()
            start = part.stat().st_size if part.is_file() else 0
            with part.open("ab") as fh:
                for i in range(start, len(data), self.chunk):
                    piece = data[i:i + self.chunk]
                    fh.write(piece)
                    fh.flush()
                    written += len(piece)
                    if self.stop_after_bytes is not None and written >= self.stop_after_bytes:
                        raise ConnectionError("connection reset by peer")
                    if self.delay:
                        time.sleep(self.delay)
            part.replace(target)
        return str(dest)


@pytest.fixture
def fake_hub(monkeypatch, demo_model_path, tmp_path):
    """Hub clients serving the demo model as several repositories on both hubs."""
    big = sharded_copy(demo_model_path, tmp_path / "repos" / "sharded")
    repos = {}
    for hub in ("hf", "modelscope"):
        repos[(hub, "unsloth/Qwen3-0.6B-unsloth-bnb-4bit")] = demo_model_path
        repos[(hub, "Qwen/Qwen3-0.6B")] = big
        repos[(hub, "acme/Qwen3-Tiny")] = demo_model_path
    return FakeClients(monkeypatch, repos)


@pytest.fixture
def run_in_thread():
    """Start a function in a thread; returns (thread, box) where box gets 'value' or 'error'."""

    def start(fn, *args, **kwargs):
        box: dict = {}

        def target():
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread, box

    return start
