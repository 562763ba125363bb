"""The launcher parent of a ddp / fsdp run: starts the ranks through accelerate's launcher (the
command from core.train.launch), waits for them, and records a failure the ranks could not record
themselves (a rank killed with -9, a crash in C code)."""

from __future__ import annotations

import os
from pathlib import Path

from core.train.launch import (
    PEER_LOST,
    Plan,
    check_resume,
    decoder_layer_class,
    rank_command,
    rank_env,
    write_accelerate_config,
)


def run_ranks(cfg, run_dir: Path, resume: bool, p: Plan, model_path: Path | None) -> int:
    """Start the ranks through accelerate and wait for them (this process is the launcher parent).

    Returns the run's exit code. When the ranks end and status.json still says the run is active,
    a rank died without recording it (kill -9, a crash in C code): the run is marked failed and
    resumable here. The ranks run in a session of their own, so a Ctrl-C in the terminal reaches
    only this process, which turns it into a stop request (the worker's signal handler)."""
    import shutil
    import subprocess
    import tempfile

    from core.procs import ROOT
    from core.train import runs
    from core.train.exits import EXIT_OK, failure_exit, log

    if resume:
        check_resume(run_dir, p)
    config_file = write_accelerate_config(run_dir, p, layer_class=decoder_layer_class(model_path))
    cmd = rank_command(run_dir, config_file, resume=resume)
    where = f"GPUs {','.join(map(str, p.gpus))}" if p.gpus else "the CPU (gloo, testing)"
    log(f"starting {p.world_size} {p.strategy} processes on {where}: {' '.join(cmd[1:])}")
    reports = Path(tempfile.mkdtemp(prefix="qwentune-ranks-"))
    try:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=rank_env(p, reports=reports), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        runs.write_status(run_dir, agent_pid=proc.pid, rank_pids=None)
        try:
            rc = proc.wait()
        except BaseException:  # aborted (a second Ctrl-C): take every rank down with the launcher
            _kill_ranks(run_dir, proc)
            raise
        status = runs.RunFolder(run_dir).read_status_raw() or runs.Status()
        report = _first_report(reports)
        if status.state in runs.ACTIVE:
            _kill_ranks(run_dir, proc)
            return _record_lost_rank(run_dir, p, rc, report)
        if (status.state == "failed" and report is not None and not report.get("peer_lost")
                and (status.error or "").startswith(PEER_LOST)):
            return _record_lost_rank(run_dir, p, rc, report)  # rank 0 only saw the rank that failed go
    finally:
        shutil.rmtree(reports, ignore_errors=True)
    if status.state in ("done", "stopped"):
        return EXIT_OK
    return failure_exit(bool(status.oom), status.error_kind)


def _first_report(reports: Path) -> dict | None:
    """The failure a rank other than 0 reported; a rank's own error before one that only saw a peer go."""
    import json

    found = []
    for path in sorted(reports.glob("rank-*.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    found.sort(key=lambda r: bool(r.get("peer_lost")))
    return found[0] if found else None


def _record_lost_rank(run_dir: Path, p: Plan, rc: int, report: dict | None) -> int:
    """The ranks ended while status.json still says the run is active: record the failure."""
    import signal

    from core.train import runs
    from core.train.exits import failure_exit, log

    ckpt = runs.RunFolder(run_dir).latest_checkpoint()
    resume = ("Resume continues from " + ckpt.name + "." if ckpt else
              "Resume starts again from step 0 (no checkpoint yet).")
    if report is not None:
        error, kind = f"rank {report.get('rank')}: {report.get('error')}", report.get("kind") or "run"
        advice, resumable = report.get("advice") or resume, bool(report.get("resumable", True))
        oom = bool(report.get("oom"))
    else:
        ended = (f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}") if rc else "exit code 0"
        error = (f"a training process of this {p.world_size}-process run ended without recording why "
                 f"(the launcher ended with {ended}); train.log shows which rank ended first")
        kind, advice, resumable, oom = "run", resume, True, False
    log(f"error: {error}\n{advice}")
    runs.write_status(run_dir, state="failed", phase="", finished=runs.now_iso(), error=error, error_kind=kind,
                      advice=advice, resumable=resumable, **({"oom": True} if oom else {}))
    return failure_exit(oom, kind)


def _kill_ranks(run_dir: Path, proc) -> None:
    """SIGKILL the launcher's session and every rank's (each rank leads a session of its own)."""
    import signal

    from core.train import runs

    status = runs.RunFolder(run_dir).read_status_raw() or runs.Status()
    for pid in [proc.pid, *(status.rank_pids or [])]:
        if pid == proc.pid or runs.pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    try:
        proc.wait(timeout=10)
    except Exception:  # a launcher that does not end is reported by the caller's status
        pass
