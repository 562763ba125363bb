"""Download jobs found again from disk: a restarted web server sees a running download, follows its
progress, cancels it, and a second Download attaches to it instead of starting another process.

The subprocess tests run the real ``python -m core models get`` against a local fake hub (the real
huggingface_hub client), throttled so the download is still running while the test looks at it.
"""

from __future__ import annotations

import json
import time

import pytest

from core.models import repo_dir
from core.models.download import DownloadProgress
from core.models.jobs import DownloadJob, read_log_tail, running_downloads
from core.models.paths import MARKER, jobs_dir
from core.procs import JobRecord
from core.runfolder import pid_alive
from tests.models.fake_hub import FakeHub

REPO = "acme/Qwen3-Tiny"


@pytest.fixture
def slow_hub(demo_model_path, isolated, monkeypatch):
    # About 450 kB of weights at 40 kB/s: the download runs for several seconds.
    with FakeHub({REPO: demo_model_path}, bytes_per_second=40_000) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def _wait_downloading(job: DownloadJob, min_bytes: int = 1, timeout: float = 60) -> DownloadProgress:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = job.progress
        if report.state == "downloading" and report.done_bytes >= min_bytes:
            return report
        assert not report.finished, (report, job.errors())
        time.sleep(0.2)
    raise AssertionError(f"the download did not start: {job.progress}, {job.errors()}")


def _simulate_restart(job: DownloadJob) -> int:
    """What a server restart leaves: the process and its files on disk, no job object."""
    pid = job.pid
    assert job._proc is not None
    # The new server did not start the child: it must not be able to wait on it. The old server's
    # reaper thread still reaps it, so it never lingers as a zombie.
    return pid


@pytest.mark.slow
def test_a_restarted_server_finds_the_running_download_and_sees_it_finish(slow_hub, isolated):
    pid = _simulate_restart(DownloadJob(REPO, hub="hf").start())
    found = DownloadJob.find(REPO, hub="hf")
    assert found is not None and found._proc is None and found.running and found.pid == pid
    assert [j.record_path for j in running_downloads()] == [found.record_path]
    assert found.record_path.parent == jobs_dir() and found.log_path.is_file()
    first = _wait_downloading(found)
    assert first.total_bytes == slow_hub.total_bytes(REPO)
    time.sleep(2.5)
    later = found.progress
    assert later.state in ("downloading", "verifying", "done") and later.done_bytes > first.done_bytes
    # A second Download (from this server or another) attaches to the running process.
    again = DownloadJob(REPO, hub="hf").start()
    assert again._proc is None and again.pid == pid
    report = found.wait(120)
    assert report.state == "done", (report, found.errors())
    dest = repo_dir(REPO, "hf")
    assert report.path == str(dest) and (dest / MARKER).is_file()
    rec = JobRecord.read(found.record_path)
    assert rec.state == "done" and rec.returncode == 0 and rec.kind == "download"
    assert running_downloads() == [] and not found.running


@pytest.mark.slow
def test_a_reattached_download_can_be_cancelled_and_resumes(slow_hub, isolated):
    pid = _simulate_restart(DownloadJob(REPO, hub="hf").start())
    found = DownloadJob.find(REPO, hub="hf")
    _wait_downloading(found, min_bytes=30_000)
    found.cancel()
    assert not pid_alive(pid) and not found.running
    report = found.progress
    assert report.state == "cancelled", report
    assert JobRecord.read(found.record_path).state == "cancelled"
    # Another server sees it cancelled too, not failed.
    assert DownloadJob.find(REPO, hub="hf").progress.state == "cancelled"
    dest = repo_dir(REPO, "hf")
    assert not (dest / MARKER).exists()
    slow_hub.bytes_per_second = 0
    job = DownloadJob(REPO, hub="hf").start()
    assert job._proc is not None and job.pid != pid  # not running any more: a new process
    assert job.wait(120).state == "done" and (dest / MARKER).is_file()


@pytest.mark.slow
def test_a_failed_download_found_from_disk_says_why(isolated, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    DownloadJob("qwen3-0.6b", hub="hf").start().wait(60)
    found = DownloadJob.find("qwen3-0.6b", hub="hf")
    report = found.progress
    assert report.state == "failed" and "Cannot reach Hugging Face" in report.error
    assert "--hub modelscope" in report.advice


def _fake_job(isolated, lines: list[str], *, state: str = "running", pid: int | None = None) -> DownloadJob:
    import os

    job = DownloadJob(REPO, hub="hf")
    job.record_path.parent.mkdir(parents=True, exist_ok=True)
    job.log_path.write_text("".join(lines), encoding="utf-8")
    JobRecord(kind="download", command=job.command(), log=str(job.log_path), pid=pid or os.getpid(),
              state=state, info={"name_or_path": REPO, "hub": "hf", "method": "qlora", "quant": "auto",
                                 "cache_dir": "", "repo_id": REPO}).write(job.record_path)
    return job


def _line(**fields) -> str:
    return json.dumps(DownloadProgress(repo_id=REPO, hub="hf", **fields).to_dict()) + "\n"


def test_a_torn_last_line_is_left_out(isolated):
    lines = [_line(state="checking"), _line(state="downloading", done_bytes=1000, total_bytes=5000),
             _line(state="downloading", done_bytes=2000, total_bytes=5000)[:40]]  # still being written
    job = _fake_job(isolated, lines)  # its pid is this process: alive
    found = DownloadJob.find(REPO, hub="hf")
    assert found is not None and found.running
    report = found.progress
    assert report.state == "downloading" and report.done_bytes == 1000
    assert found.errors() == []
    with job.log_path.open("a", encoding="utf-8") as f:  # the rest of the line arrives
        f.write(_line(state="downloading", done_bytes=2000, total_bytes=5000)[40:])
    assert found.progress.done_bytes == 2000


def test_a_report_after_text_without_a_newline_is_still_read(tmp_path):
    log = tmp_path / "joined.log"
    log.write_text("warning: slow disk" + _line(state="downloading", done_bytes=5, total_bytes=10) + "{not json\n",
                   encoding="utf-8")
    report, other = read_log_tail(log)
    assert report.done_bytes == 5 and other == ["warning: slow disk", "{not json"]


def test_only_the_tail_of_a_long_log_is_read(isolated, tmp_path):
    log = tmp_path / "long.log"
    body = [_line(state="downloading", done_bytes=i, total_bytes=10**6) for i in range(5000)]
    log.write_text("".join(body) + "a warning\n" + _line(state="downloading", done_bytes=777, total_bytes=10**6),
                   encoding="utf-8")
    assert log.stat().st_size > 10 * 64 * 1024
    report, other = read_log_tail(log, max_bytes=4096)
    assert report.done_bytes == 777 and other == ["a warning"]
    assert read_log_tail(tmp_path / "missing.log") == (None, [])


def test_a_dead_job_without_an_end_report_failed_with_its_last_error_line(isolated):
    job = _fake_job(isolated, [_line(state="downloading", done_bytes=10, total_bytes=100),
                               "Traceback (most recent call last):\n", "OSError: disk on fire\n"], pid=2**22 + 7)
    found = DownloadJob.find(REPO, hub="hf")
    assert not found.running
    report = found.progress
    assert report.state == "failed" and report.error == "OSError: disk on fire"
    assert running_downloads() == []
    assert job.errors()[-1] == "OSError: disk on fire"


def test_nothing_on_disk_means_no_job(isolated):
    assert DownloadJob.find(REPO, hub="hf") is None
    assert running_downloads() == []


def test_another_models_folder_has_its_own_record(isolated, tmp_path):
    default = DownloadJob(REPO, hub="hf")
    other = DownloadJob(REPO, hub="hf", cache_dir=tmp_path / "big-disk")
    assert default.record_path != other.record_path
    assert default.record_path.name == "download-acme--Qwen3-Tiny-hf.json"
    assert DownloadJob("qwen3-0.6b", hub="hf", method="lora").record_path.name == "download-Qwen--Qwen3-0.6B-hf.json"


def test_the_cli_lists_refuses_a_second_download_and_cancels(isolated, capsys):
    import subprocess
    import sys

    from core.cli import main

    # A stand-in for the GUI's download process, in its own session as spawn_core starts it.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        _fake_job(isolated, [_line(state="downloading", done_bytes=1000, total_bytes=4000)], pid=child.pid)
        assert main(["models", "downloads", "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)["downloads"]
        assert row["state"] == "downloading" and row["fraction"] == 0.25 and row["pid"] == child.pid
        # A terminal download of the same files would corrupt them: refused, saying how to go on.
        assert main(["models", "get", REPO]) == 1
        err = capsys.readouterr().err
        assert "being downloaded already" in err and f"downloads --cancel {REPO}" in err
        assert not repo_dir(REPO, "hf").exists()
        assert main(["models", "downloads", "--cancel", REPO]) == 0
        assert child.wait(10) is not None
        capsys.readouterr()
        assert main(["models", "downloads"]) == 0
        assert capsys.readouterr().out.startswith("cancelled")
        assert main(["models", "downloads", "--cancel", REPO]) == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
