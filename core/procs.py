"""The one way to start a core subprocess (training, export, download) and find it again from disk.

:func:`spawn_core` runs ``python -m core <args>`` detached in its own session with the same
environment every time: this checkout on PYTHONPATH (so ``core`` imports from any working
directory), unbuffered output, and QWENTUNE_LOG_REDIRECTED set when its output already goes to a
log file (the worker then does not copy it there a second time).

A job started with a ``record`` path gets a small JSON record on disk (:class:`JobRecord`: the
command, pid, log, state). The child itself writes its exit status there when it ends
(core.cli reads QWENTUNE_JOB_RECORD), so a web server that restarted meanwhile still finds the job,
running or finished; a child killed before it could write is read back as failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.runfolder import now_iso, parse_iso, pid_alive
from core.settings import DamagedFile, read_json, read_tail, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
RECORD_ENV = "QWENTUNE_JOB_RECORD"
# A record without a pid this long after its start belongs to a child that never got going.
START_GRACE_S = 60.0


def core_env(*, log_redirected: bool = False, record: str | os.PathLike | None = None) -> dict:
    """The environment of a core subprocess."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in parts:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *parts])
    if log_redirected:
        env["QWENTUNE_LOG_REDIRECTED"] = "1"
    else:
        env.pop("QWENTUNE_LOG_REDIRECTED", None)
    if record is not None:
        env[RECORD_ENV] = str(record)
    else:
        env.pop(RECORD_ENV, None)
    return env


def core_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "core", *[str(a) for a in args]]


@dataclass
class JobRecord:
    """A core subprocess started for the GUI, as kept on disk."""

    kind: str  # export | train | download | ...
    command: list[str]
    log: str
    pid: int | None = None
    state: str = "running"  # running | done | failed | cancelled (written by whoever stopped it)
    returncode: int | None = None
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    error: str = ""
    info: dict = field(default_factory=dict)  # what the starter wants to find again (format, run, ...)

    @classmethod
    def read(cls, path: str | os.PathLike) -> JobRecord | None:
        """The record at ``path`` as it stands now (None if there is none). A job whose process is
        gone without writing its end is failed; a damaged record is a failed job saying so."""
        try:
            data = read_json(path, expect=dict)
        except DamagedFile as exc:
            return cls(kind="?", command=[], log="", state="failed", error=f"unreadable job record: {exc}")
        if data is None:
            return None
        known = {f for f in cls.__dataclass_fields__}
        try:
            rec = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            return cls(kind="?", command=[], log="", state="failed", error=f"unreadable job record {path}: {exc}")
        if rec.state == "running" and rec.pid is None:
            started = parse_iso(rec.started)
            if started is not None and time.time() - started < START_GRACE_S:
                return rec  # started a moment ago; the child writes its pid as it starts
        if rec.state == "running" and not pid_alive(rec.pid):
            rec.state = "failed"
            rec.error = rec.error or "the process ended without recording how (killed, or the machine restarted)"
        return rec

    def write(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, asdict(self))

    @property
    def running(self) -> bool:
        return self.state == "running"

    def log_tail(self, max_bytes: int = 6000) -> str:
        try:
            data, _cut = read_tail(self.log, max_bytes)
        except (OSError, TypeError):
            return ""
        return data.decode("utf-8", errors="replace")


def spawn_core(args: list[str], log_path: str | os.PathLike | None, *, record: str | os.PathLike | None = None,
               kind: str = "", info: dict | None = None, pipe: bool = False, header: bool = False,
               reap: bool = True) -> subprocess.Popen:
    """Start ``python -m core <args>`` detached (own session: it outlives the web server).

    ``log_path``: stdout and stderr are appended there (the usual case). ``pipe``: stdout and
    stderr come back as text pipes instead, for a caller that reads a progress stream.
    ``record``: write a :class:`JobRecord` there, completed by the child when it exits.
    ``header``: write the command line into the log first. ``reap``: a thread waits for the
    child so it never lingers as a zombie that looks alive.
    """
    cmd = core_command(args)
    env = core_env(log_redirected=log_path is not None and not pipe, record=record)
    rec = None
    if record is not None:
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        rec = JobRecord(kind=kind or (args[0] if args else ""), command=cmd, log=str(log_path or ""),
                        info=dict(info or {}))
        rec.write(record)  # before the child starts, so its own end always lands on an existing record
    if pipe:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                start_new_session=True)
    else:
        if log_path is None:
            raise ValueError("spawn_core needs a log path or pipe=True")
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            if header:
                log.write(f"\n$ {' '.join(cmd)}\n".encode())
                log.flush()
            proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    if rec is not None:
        # The pid at once, so another server can follow or stop the job from its first moment; the
        # child needs far longer to import before it writes its own start, so this lands first.
        _record_pid(record, proc.pid)
    if reap and not pipe:
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
    return proc


def _record_pid(path: str | os.PathLike, pid: int) -> None:
    try:
        data = read_json(path, expect=dict)
    except DamagedFile:
        return
    if data is not None and data.get("pid") is None and data.get("state") == "running":
        data["pid"] = pid
        write_json_atomic(path, data)


def start_record() -> None:
    """Called by the child (core.cli) as it starts: record its pid in its job record."""
    _update_record(pid=os.getpid())


def finish_record(returncode: int, error: str = "") -> None:
    """Called by the child (core.cli) as it exits: record its exit status in its job record."""
    _update_record(pid=os.getpid(), state="done" if returncode == 0 else "failed", returncode=returncode,
                   finished=now_iso(), error=error)


def _update_record(**updates) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    try:
        data = read_json(path, expect=dict)
        if data is None:
            return
        data.update({k: v for k, v in updates.items() if v != "" or k != "error"})
        write_json_atomic(path, data)
    except DamagedFile as exc:
        print(f"note: the job record is damaged ({exc}); the job's result stands", file=sys.stderr)
    except OSError as exc:  # the job's own result stands; only its record is stale
        print(f"note: could not update the job record {path}: {exc}", file=sys.stderr)
