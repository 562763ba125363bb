"""core.procs: one launcher for core subprocesses, and job records found again from disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.procs import ROOT, JobRecord, core_env, spawn_core


def wait_done(record: Path, timeout: float = 60.0) -> JobRecord:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = JobRecord.read(record)
        if rec is not None and not rec.running:
            return rec
        time.sleep(0.1)
    raise AssertionError(f"job did not end: {JobRecord.read(record)}")


def test_the_environment_of_every_core_subprocess(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = core_env(log_redirected=True, record="/tmp/r.json")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["QWENTUNE_LOG_REDIRECTED"] == "1"
    assert env["QWENTUNE_JOB_RECORD"] == "/tmp/r.json"
    assert "QWENTUNE_LOG_REDIRECTED" not in core_env()


def test_a_job_records_its_end_and_is_found_from_disk(tmp_path):
    record, log = tmp_path / "jobs" / "hw.json", tmp_path / "jobs" / "hw.log"
    proc = spawn_core(["hw", "--json"], log, record=record, kind="hw", info={"why": "test"}, header=True)
    assert os.getpgid(proc.pid) == proc.pid  # its own session: it outlives the server that started it
    rec = wait_done(record)
    assert rec.state == "done" and rec.returncode == 0 and rec.pid == proc.pid and rec.finished
    assert rec.kind == "hw" and rec.info == {"why": "test"} and rec.command[1:4] == ["-m", "core", "hw"]
    text = log.read_text()
    assert text.startswith("\n$ ") and "{" in text  # the command line, then the command's own output


def test_a_failing_job_and_a_killed_one_read_as_failed(tmp_path):
    record = tmp_path / "bad.json"
    spawn_core(["export", "--run", str(tmp_path / "nothing"), "--format", "lora"], tmp_path / "bad.log",
               record=record)
    rec = wait_done(record)
    assert rec.state == "failed" and rec.returncode == 2 and "not a run folder" in rec.error
    assert "not a run folder" in rec.log_tail()
    # A record left "running" by a process that is gone (kill -9, a reboot) is failed, not running.
    gone = tmp_path / "gone.json"
    JobRecord(kind="export", command=[], log="", pid=2**22 + 777).write(gone)
    assert JobRecord.read(gone).state == "failed"
    (tmp_path / "damaged.json").write_text("[")
    assert JobRecord.read(tmp_path / "damaged.json").state == "failed"


def test_export_jobs_are_found_again_after_a_server_restart(tmp_path):
    from core.eval.jobs import ExportJobs

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\ndata: {mix_dir: x}\n")
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    job = ExportJobs().start(run, "lora")  # no adapter: the export fails, and says why in its log
    deadline = time.time() + 60
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.1)
    assert job.state == "failed"
    again = ExportJobs().get(run)  # a new server process: nothing in memory
    assert again is not None and again.fmt == "lora" and again.state == "failed"
    assert "adapter" in again.log_tail()
    assert (run / "jobs" / "export-lora.json").is_file() and (run / "jobs" / "export-lora.log").is_file()
