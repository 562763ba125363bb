"""Downloads: progress, resume, the disk check, offline and hub errors, tokens never written.

Most tests replace the hub clients at their boundary (tests/models/conftest.py: FakeClients). The
last ones run the real huggingface_hub client in a subprocess against a local fake hub server.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from core.models import (
    HubUnreachable,
    NotEnoughDisk,
    RepoGated,
    RepoNotFound,
    local_path_for,
    repo_dir,
    resolve_model,
)
from core.models.download import DownloadProgress, download_repo, fmt_bytes, fmt_duration
from core.models.jobs import DownloadJob
from core.models.resolve import MARKER
from tests.conftest import ROOT
from tests.models.fake_hub import FakeHub

HF_SECRET = "hf_TESTSECRET_do_not_store_4f2a9c"
MS_SECRET = "ms-TESTSECRET-do-not-store-8b1d"


def collect():
    reports: list[DownloadProgress] = []
    return reports, reports.append


# -------------------------------------------------------------------------------- downloading
@pytest.mark.parametrize("hub", ["hf", "modelscope"])
def test_download_with_progress_then_reuse(fake_hub, hub, monkeypatch):
    monkeypatch.setattr("core.models.download.PROGRESS_INTERVAL_S", 0.05)
    fake_hub.chunk, fake_hub.delay = 16 * 1024, 0.02
    reports, report = collect()
    path = resolve_model("qwen3-0.6b", method="lora", hub=hub, progress=report)
    dest = repo_dir("Qwen/Qwen3-0.6B", hub)
    assert path == str(dest)
    marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    assert marker["repo_id"] == "Qwen/Qwen3-0.6B" and marker["hub"] == hub
    states = [r.state for r in reports]
    assert states[0] == "checking" and states[-1] == "done" and "downloading" in states
    moving = [r for r in reports if r.state == "downloading"]
    total = moving[0].total_bytes
    assert total == sum(p.stat().st_size for p in fake_hub.files(hub, "Qwen/Qwen3-0.6B"))
    done = [r.done_bytes for r in moving]
    assert done == sorted(done) and len(set(done)) >= 3, done  # it moved, in steps, never backwards
    assert any(r.speed_bps > 0 and r.eta_s is not None for r in moving)
    assert reports[-1].fraction == 1.0
    # The second time it is found on disk: no hub call at all.
    calls = len(fake_hub.calls)
    assert resolve_model("qwen3-0.6b", method="lora", hub=hub) == path
    assert len(fake_hub.calls) == calls


def test_files_a_fine_tune_does_not_need_are_skipped(fake_hub, tmp_path, demo_model_path):
    import shutil

    repo = tmp_path / "repo-with-extras"
    shutil.copytree(demo_model_path, repo)
    (repo / "pytorch_model.bin").write_bytes(b"x" * 5000)
    (repo / "original").mkdir()
    (repo / "original" / "consolidated.pth").write_bytes(b"x" * 5000)
    (repo / "model-q4.gguf").write_bytes(b"x" * 5000)
    fake_hub.repos[("hf", "acme/Qwen3-Extras")] = repo
    reports, report = collect()
    dest = download_repo("acme/Qwen3-Extras", "hf", tmp_path / "out", progress=report)
    assert (dest / "model.safetensors").is_file()
    assert not (dest / "pytorch_model.bin").exists() and not (dest / "original").exists()
    assert not (dest / "model-q4.gguf").exists()
    assert reports[-1].total_bytes == sum(p.stat().st_size for p in demo_model_path.iterdir() if p.is_file())


def test_interrupted_download_resumes(fake_hub):
    fake_hub.chunk = 32 * 1024
    fake_hub.stop_after_bytes = 200_000
    with pytest.raises(HubUnreachable):
        resolve_model("qwen3-0.6b", method="lora", hub="hf")
    dest = repo_dir("Qwen/Qwen3-0.6B", "hf")
    assert not (dest / MARKER).exists()
    assert local_path_for("qwen3-0.6b", method="lora") is None
    kept = {p.name: p.stat().st_size for p in dest.iterdir() if p.is_file()}
    assert kept  # partial work stays on disk
    fake_hub.stop_after_bytes = None
    assert resolve_model("qwen3-0.6b", method="lora", hub="hf") == str(dest)
    assert (dest / MARKER).is_file()
    for name, size in kept.items():
        if not name.endswith(".incomplete"):
            assert (dest / name).stat().st_size == size


# ------------------------------------------------------------------------------ the disk check
DiskUsage = namedtuple("DiskUsage", "total used free")


def test_not_enough_disk_is_refused_before_downloading(fake_hub, monkeypatch):
    monkeypatch.setattr("core.models.download.shutil.disk_usage", lambda p: DiskUsage(10**12, 10**12, 10**6))
    reports, report = collect()
    with pytest.raises(NotEnoughDisk) as err:
        resolve_model("qwen3-0.6b", method="lora", progress=report)
    text = str(err.value)
    assert "Qwen/Qwen3-0.6B" in text and "1.00 MB is free" in text
    assert "--cache-dir" in text and "QWENTUNE_MODELS_DIR" in text
    assert not any(name in ("snapshot_download", "download_repo") for _, name, _ in fake_hub.calls)
    assert reports[-1].state == "failed"


def test_disk_check_counts_only_what_is_missing(fake_hub, monkeypatch, demo_model_path):
    import shutil

    from core.models.download import DISK_MARGIN_BYTES

    repo = fake_hub.repos[("hf", "acme/Qwen3-Tiny")]
    total = sum(p.stat().st_size for p in repo.iterdir() if p.is_file())
    weights = (repo / "model.safetensors").stat().st_size
    dest = repo_dir("acme/Qwen3-Tiny", "hf")
    dest.mkdir(parents=True)
    shutil.copy(demo_model_path / "model.safetensors", dest / "model.safetensors")  # already there
    free = DISK_MARGIN_BYTES + (total - weights) + 1000  # room for the rest, not for everything
    monkeypatch.setattr("core.models.download.shutil.disk_usage", lambda p: DiskUsage(10**12, 10**12, free))
    assert resolve_model("acme/Qwen3-Tiny") == str(dest)


# --------------------------------------------------------------------------- offline and errors
def _assert_offline_message(err, repo_id: str, hub: str) -> None:
    text = str(err)
    assert repo_id in text
    assert "Hugging Face" in text and "ModelScope" in text
    assert f"--hub {'modelscope' if hub == 'hf' else 'hf'}" in text
    if hub == "hf":
        assert "HF_ENDPOINT=https://hf-mirror.com" in text


def test_offline_hf_metadata_call_gives_the_clear_message_quickly(fake_hub):
    import httpx

    fake_hub.fail_list = httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
    started = time.monotonic()
    with pytest.raises(HubUnreachable) as err:
        resolve_model("qwen3-8b", hub="hf")
    assert time.monotonic() - started < 5
    _assert_offline_message(err.value, "unsloth/Qwen3-8B-unsloth-bnb-4bit", "hf")
    assert "python -m core models get qwen3-8b --hub modelscope --quant dynamic4" in str(err.value)


def test_offline_during_snapshot_download(fake_hub):
    from huggingface_hub.errors import LocalEntryNotFoundError

    fake_hub.fail_snapshot = LocalEntryNotFoundError(
        "An error happened while trying to locate the files on the Hub and we cannot find the appropriate "
        "snapshot folder for the specified revision on the local disk. Please check your internet connection "
        "and try again.")
    with pytest.raises(HubUnreachable) as err:
        resolve_model("qwen3-0.6b", method="lora", hub="hf")
    _assert_offline_message(err.value, "Qwen/Qwen3-0.6B", "hf")


def test_offline_modelscope_suggests_hugging_face(fake_hub):
    from modelscope_hub.errors import NetworkError

    fake_hub.fail_list = NetworkError("Connection failed: Max retries exceeded (NameResolutionError)")
    with pytest.raises(HubUnreachable) as err:
        resolve_model("Qwen/Qwen3-4B-Instruct-2507", hub="modelscope")
    _assert_offline_message(err.value, "Qwen/Qwen3-4B-Instruct-2507", "modelscope")


def test_unreachable_host_fails_fast_without_calling_the_client(monkeypatch):
    import huggingface_hub

    def refuse(url, timeout=None, headers=None):
        return 0, b"[Errno 101] Network is unreachable"

    def must_not_run(*a, **k):
        raise AssertionError("the client must not be called when the probe fails")

    monkeypatch.setattr("core.net.http_get", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", must_not_run)
    started = time.monotonic()
    with pytest.raises(HubUnreachable) as err:
        resolve_model("qwen3-4b", hub="hf")
    assert time.monotonic() - started < 2
    _assert_offline_message(err.value, "unsloth/Qwen3-4B-unsloth-bnb-4bit", "hf")


def test_a_hub_that_never_answers_is_given_up_on(fake_hub, monkeypatch):
    import huggingface_hub

    def hang(*a, **k):
        time.sleep(30)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", hang)
    monkeypatch.setattr("core.models.hubs.METADATA_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(HubUnreachable) as err:
        resolve_model("qwen3-0.6b", hub="hf")
    assert time.monotonic() - started < 3
    assert "no answer within" in str(err.value)


def test_offline_mode_variable_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable) as err:
        resolve_model("qwen3-0.6b", hub="hf")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_repository_not_found_suggests_the_other_hub(fake_hub):
    with pytest.raises(RepoNotFound) as err:
        resolve_model("acme/NoSuchQwen3", hub="hf")
    assert "acme/NoSuchQwen3 was not found on Hugging Face" in str(err.value)
    assert "--hub modelscope" in str(err.value)


def test_gated_repository_explains_login(fake_hub, monkeypatch):
    import httpx
    from huggingface_hub.errors import GatedRepoError

    request = httpx.Request("GET", "https://huggingface.co/api/models/acme/Gated")
    fake_hub.fail_list = GatedRepoError("403 Forbidden: gated", response=httpx.Response(403, request=request))
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    with pytest.raises(RepoGated) as err:
        resolve_model("acme/Gated-Qwen3", hub="hf")
    text = str(err.value)
    assert "huggingface-cli login" in text and "HF_TOKEN environment variable" in text
    assert HF_SECRET not in text


def test_missing_modelscope_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)
    monkeypatch.setattr("core.models.hubs.probe", lambda hub, timeout=0: None)
    with pytest.raises(Exception) as err:
        resolve_model("qwen3-0.6b", hub="modelscope")
    assert "pip install modelscope==" in str(err.value)


def test_progress_line_formats():
    p = DownloadProgress("unsloth/Qwen3-8B-unsloth-bnb-4bit", "hf", "downloading", 1_230_000_000,
                         5_550_000_000, 35_100_000, 123.0)
    assert p.line() == ("[hf] unsloth/Qwen3-8B-unsloth-bnb-4bit  1.23 GB / 5.55 GB   22.2%  35.10 MB/s  "
                        "ETA 2m03s")
    assert fmt_bytes(512) == "512 B" and fmt_duration(3725) == "1h02m" and fmt_duration(None) == "?"
    assert DownloadProgress.from_dict({**p.to_dict(), "unknown": 1}).done_bytes == 1_230_000_000


# ---------------------------------------------------------------------------------------- tokens
def _files_containing(root: Path, secrets: tuple[str, ...]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return hits


def test_tokens_are_never_written(fake_hub, isolated, monkeypatch, capsys, model_copy):
    from core.cli import main

    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", MS_SECRET)
    assert main(["models", "get", "qwen3-0.6b", "--hub", "hf", "--json"]) == 0
    assert main(["models", "get", "qwen3-0.6b", "--hub", "modelscope", "--quant", "none", "--json"]) == 0
    assert main(["models", "add", str(model_copy())]) == 0
    assert main(["models", "list", "--json"]) == 0
    out = capsys.readouterr()
    assert "HF_TOKEN environment variable" in out.err  # it says where the token comes from...
    for secret in (HF_SECRET, MS_SECRET):  # ...but never what it is
        assert secret not in out.out and secret not in out.err
    assert not _files_containing(isolated.tmp, (HF_SECRET, MS_SECRET))
    # The clients were not handed the token by QwenTune either: they find it themselves.
    assert all(call[2].get("token") in (None,) for call in fake_hub.calls)


# ------------------------------------------------------ the real client against a local fake hub
@pytest.fixture
def local_hub(demo_model_path, isolated, monkeypatch):
    with FakeHub({"acme/Qwen3-Tiny": demo_model_path}, bytes_per_second=0) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", HF_SECRET)
        yield hub


@pytest.mark.slow
def test_background_job_downloads_with_the_real_client(local_hub, isolated):
    job = DownloadJob("acme/Qwen3-Tiny", hub="hf").start()
    assert HF_SECRET not in " ".join(job.command())
    report = job.wait(120)
    assert report.state == "done", (report, job.errors())
    dest = repo_dir("acme/Qwen3-Tiny", "hf")
    assert report.path == str(dest) and (dest / MARKER).is_file()
    assert report.total_bytes == local_hub.total_bytes("acme/Qwen3-Tiny")
    # The token reached the hub (so gated repositories work) and was written nowhere.
    assert local_hub.auth_headers and set(local_hub.auth_headers) == {f"Bearer {HF_SECRET}"}
    assert not _files_containing(isolated.tmp, (HF_SECRET,))
    assert local_path_for("acme/Qwen3-Tiny") == str(dest)


@pytest.mark.slow
def test_background_job_can_be_cancelled_and_resumed(local_hub, isolated):
    local_hub.bytes_per_second = 60_000  # the 450 kB weights take several seconds
    job = DownloadJob("acme/Qwen3-Tiny", hub="hf").start()
    deadline = time.monotonic() + 60
    while job.progress.state != "downloading" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.running
    job.cancel()
    report = job.progress
    assert report.state == "cancelled" and not job.running
    dest = repo_dir("acme/Qwen3-Tiny", "hf")
    assert not (dest / MARKER).exists()
    local_hub.bytes_per_second = 0
    report = DownloadJob("acme/Qwen3-Tiny", hub="hf").start().wait(120)
    assert report.state == "done" and (dest / MARKER).is_file()


@pytest.mark.slow
def test_background_job_reports_failure_with_advice(isolated, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    report = DownloadJob("qwen3-0.6b", hub="hf").start().wait(60)
    assert report.state == "failed"
    assert "Cannot reach Hugging Face" in report.error and "--hub modelscope" in report.advice


def test_cli_progress_json_is_one_object_per_line(fake_hub, capsys):
    from core.cli import main

    assert main(["models", "get", "acme/Qwen3-Tiny", "--progress-json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["state"] == "checking" and lines[-1]["state"] == "done"
    assert lines[-1]["path"] == str(repo_dir("acme/Qwen3-Tiny", "hf"))


def test_subprocess_environment_keeps_the_repo_root(isolated):
    job = DownloadJob("demo")
    cmd = job.command()
    assert cmd[:5] == [sys.executable, "-m", "core", "models", "get"]
    assert os.path.isdir(ROOT / "core")


def test_the_probe_needs_an_http_answer_and_accepts_any_status(monkeypatch):
    """One probe for models and datasets (core.net): a silent listener is unreachable, a 404 is not."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from core.models import hubs

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        hubs.probe("hf", timeout=0.5)
    assert time.monotonic() - started < 3
    silent.close()

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        hubs.probe("modelscope", timeout=2)
    finally:
        server.shutdown()
        server.server_close()
