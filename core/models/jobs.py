"""Background downloads: ``python -m core models get ... --progress-json`` as a subprocess, for the GUI.

The web server stays responsive, the job can be cancelled, and a cancelled or failed download
resumes next time. The job starts through :func:`core.procs.spawn_core` like training and export; its
record and log live under ``<cache root>/jobs/``, so a restarted server finds a running download
again, follows its progress and can cancel it, and a second start attaches instead of downloading
the same files twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from core.models.download import DownloadProgress
from core.settings import read_tail

# How much of a job's log is read to find its latest progress line and error (a progress line is
# well under 1 kB; the error lines of a traceback fit too).
LOG_TAIL_BYTES = 64 * 1024


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text.replace("/", "--"))


def job_record_path(repo_or_name: str, hub: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the download job of ``repo_or_name`` from ``hub`` keeps its record (``.json``; its log is
    the ``.log`` beside it): ``<cache root>/jobs/download-<name>-<hub>.json``. A models folder other
    than the default one gets its own records (the same repository there is different files)."""
    from core.models.paths import jobs_dir, models_dir

    name = f"download-{_safe(repo_or_name)}-{hub}"
    if cache_dir and Path(cache_dir).expanduser().resolve() != models_dir().resolve():
        import hashlib

        name += "-" + hashlib.sha1(str(Path(cache_dir).expanduser().resolve()).encode()).hexdigest()[:8]
    return jobs_dir() / f"{name}.json"


def read_log_tail(path: str | os.PathLike,
                  max_bytes: int = LOG_TAIL_BYTES) -> tuple[DownloadProgress | None, list[str]]:
    """(the last complete progress report, the non-JSON lines) at the end of a download job's log.

    Only the last ``max_bytes`` are read. A line without its newline is still being written (or was
    cut off by a kill) and is left out, as is the first, partial line of a tail that starts mid-file.
    """
    try:
        data, cut = read_tail(path, max_bytes)
    except OSError:
        return None, []
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn line
    if cut and lines:
        lines.pop(0)
    report, other = None, []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        # stdout and stderr share the log: a report may follow text printed without a newline.
        start = 0 if line.startswith("{") else line.find('{"repo_id"')
        if start >= 0:
            try:
                data_obj = json.loads(line[start:])
                if isinstance(data_obj, dict):
                    report = DownloadProgress.from_dict(data_obj)
                    if line[:start].strip():
                        other.append(line[:start].strip())
                    continue
            except (json.JSONDecodeError, TypeError):
                pass
        other.append(line)
    return report, other


class DownloadJob:
    """A download in a subprocess (``python -m core models get ... --progress-json``).

    It is started through :func:`core.procs.spawn_core` like training and export: its progress lines
    and errors go to a log and it has a :class:`core.procs.JobRecord`, both under
    ``<cache root>/jobs/`` (:func:`job_record_path`). Any server process can therefore find it again
    (:meth:`find`, :func:`running_downloads`), read its progress from the log and cancel it; starting
    a download that is already running attaches to it instead of starting a second process.

    ``progress`` is the latest report; ``cancel()`` stops it (partial files stay and resume later).
    The hub token travels only in the inherited environment, never on the command line or on disk.
    """

    def __init__(self, name_or_path: str, *, hub: str = "hf", method: str = "qlora", quant: str = "auto",
                 cache_dir: str | os.PathLike | None = None):
        self.name_or_path = name_or_path
        self.hub, self.method, self.quant = hub, method, quant
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.repo_id = self._repo_id()
        self.record_path = job_record_path(self.repo_id or name_or_path, hub, self.cache_dir)
        self.log_path = self.record_path.with_suffix(".log")
        self._proc: subprocess.Popen | None = None  # only in the process that started it
        self._cancelled = False

    def _repo_id(self) -> str:
        from core.models.errors import ModelError
        from core.models.resolve import parse_ref

        try:
            return parse_ref(self.name_or_path, method=self.method, quant=self.quant, hub=self.hub).repo_id
        except ModelError:
            return ""  # the subprocess reports the bad name in its log

    # ---------------------------------------------------------------- finding jobs on disk
    @classmethod
    def from_record(cls, path: str | os.PathLike) -> DownloadJob | None:
        """The job whose record is at ``path`` (None without a readable download record)."""
        from core.procs import JobRecord

        rec = JobRecord.read(path)
        if rec is None or rec.kind != "download" or not rec.info.get("name_or_path"):
            return None
        info = rec.info
        job = cls(info["name_or_path"], hub=info.get("hub", "hf"), method=info.get("method", "qlora"),
                  quant=info.get("quant", "auto"), cache_dir=info.get("cache_dir") or None)
        job.record_path = Path(path)
        job.log_path = Path(rec.log) if rec.log else job.record_path.with_suffix(".log")
        return job

    @classmethod
    def find(cls, name_or_path: str, *, hub: str = "hf", method: str = "qlora", quant: str = "auto",
             cache_dir: str | os.PathLike | None = None) -> DownloadJob | None:
        """The download of this model found on disk (running or finished), or None if none was started."""
        job = cls(name_or_path, hub=hub, method=method, quant=quant, cache_dir=cache_dir)
        return job if job.record() is not None else None

    def record(self):
        from core.procs import JobRecord

        return JobRecord.read(self.record_path)

    # ------------------------------------------------------------------------- running
    def command(self) -> list[str]:
        from core.procs import core_command

        return core_command(self.args())

    def args(self) -> list[str]:
        args = ["models", "get", self.name_or_path, "--hub", self.hub, "--method", self.method,
                "--quant", self.quant, "--progress-json"]
        if self.cache_dir:
            args += ["--cache-dir", self.cache_dir]
        return args

    def start(self) -> DownloadJob:
        """Start the download, or attach to it where it is already running (from any server process)."""
        import fcntl

        from core.procs import spawn_core

        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        # Two servers (or two pages) pressing Download at once: one of them starts the process.
        with open(self.record_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                rec = self.record()
                if rec is not None and rec.running:
                    self._attach(rec)
                    return self
                self.log_path.unlink(missing_ok=True)  # a fresh log: the last line is this run's
                self._cancelled = False
                self._proc = spawn_core(self.args(), self.log_path, record=self.record_path, kind="download",
                                        info={"name_or_path": self.name_or_path, "hub": self.hub,
                                              "method": self.method, "quant": self.quant,
                                              "cache_dir": self.cache_dir or "", "repo_id": self.repo_id})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return self

    def _attach(self, rec) -> None:
        """Follow a job another start() began: its own name, method and quant, its log."""
        info = rec.info or {}
        self.name_or_path = info.get("name_or_path", self.name_or_path)
        self.method, self.quant = info.get("method", self.method), info.get("quant", self.quant)
        if rec.log:
            self.log_path = Path(rec.log)

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        rec = self.record()
        return rec is not None and rec.running

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        rec = self.record()
        return rec.pid if rec is not None else None

    @property
    def progress(self) -> DownloadProgress:
        """The latest report from the log; once the process is gone, its end (done, failed, cancelled)."""
        running = self.running
        report, other = read_log_tail(self.log_path)
        if report is None:
            report = DownloadProgress(repo_id=self.repo_id or self.name_or_path, hub=self.hub, message="starting")
        if running:
            return report
        rec = self.record()
        if self._cancelled or (rec is not None and rec.state == "cancelled"):
            report.state, report.message = "cancelled", "cancelled; downloading again resumes it"
        elif not report.finished:
            report.state = "failed"
            if other:
                report.error = other[-1]
            elif rec is not None and rec.error:
                report.error = rec.error
            else:
                code = self._proc.returncode if self._proc is not None else (rec.returncode if rec else None)
                report.error = f"the download process exited with code {code}"
        return report

    def errors(self, n: int = 20) -> list[str]:
        """The last ``n`` lines of the log that are not progress reports (warnings, errors)."""
        return read_log_tail(self.log_path)[1][-n:]

    def wait(self, timeout: float | None = None) -> DownloadProgress:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        else:
            while self.running and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
        return self.progress

    def cancel(self) -> None:
        """Stop the download's process group, whichever server started it; partial files stay."""
        from core.procs import JobRecord

        if not self.running:
            return
        pid = self.pid
        if not isinstance(pid, int):
            return
        try:
            if os.getpgid(pid) != pid:  # spawn_core makes the child a session leader: anything else
                return                  # is a recycled pid, not our download
        except ProcessLookupError:
            return
        self._cancelled = True
        rec = self.record()
        if rec is not None:
            # Written before the kill: a killed child writes nothing, and a reader must not call it failed.
            rec.state, rec.finished, rec.error = "cancelled", _now_iso(), ""
            rec.write(self.record_path)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not self._gone(pid, 10):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self._gone(pid, 5)
        if rec is None:
            JobRecord(kind="download", command=self.command(), log=str(self.log_path), pid=pid,
                      state="cancelled", finished=_now_iso()).write(self.record_path)

    def _gone(self, pid: int, timeout: float) -> bool:
        from core.runfolder import pid_alive

        if self._proc is not None:
            try:
                self._proc.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def _now_iso() -> str:
    from core.runfolder import now_iso

    return now_iso()


def running_downloads(cache_dir: str | os.PathLike | None = None) -> list[DownloadJob]:
    """The downloads running now, found from their records (started by this or an earlier server).
    ``cache_dir``: only those into that models folder (default: all)."""
    from core.models.paths import jobs_dir

    found = []
    for path in sorted(jobs_dir().glob("download-*.json")):
        job = DownloadJob.from_record(path)
        if job is None or not job.running:
            continue
        if cache_dir is not None and job.record_path != job_record_path(job.repo_id or job.name_or_path,
                                                                         job.hub, cache_dir):
            continue
        found.append(job)
    return found
