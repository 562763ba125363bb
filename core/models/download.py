"""Downloading a repository from Hugging Face or ModelScope, with progress, a disk check and resume.

:func:`download_repo` does it in this process: the hub client runs in a worker thread while the
calling thread measures the bytes arriving in the target folder (the same way for both hubs, partial
files included) and hands :class:`DownloadProgress` updates to a callback - a printed line on the CLI.

:class:`DownloadJob` runs ``python -m core models get ... --progress-json`` as a subprocess, for the
GUI: the web server stays responsive, the job can be cancelled, and a cancelled or failed download
resumes next time (the hub clients skip complete files and continue partial ones). Its record and
log live under ``<cache root>/jobs/``, so a restarted server finds a running download again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from core.models import hubs
from core.models.errors import DownloadFailed, HubUnreachable, InvalidModelFolder, ModelError, NotEnoughDisk
from core.models.paths import MARKER

ROOT = Path(__file__).resolve().parent.parent.parent
# Files a fine-tune never reads: other formats of the same weights, and Meta-style originals.
IGNORE_ALWAYS = ("*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel",
                 "original/*", "*.pth", "*.pt", "*.ckpt")
IGNORE_WITH_SAFETENSORS = ("*.bin",)
# Keep this much free beyond the download itself: the disk must not be filled to the last byte.
DISK_MARGIN_BYTES = 512 * 1024**2
PROGRESS_INTERVAL_S = 1.0  # how often a download reports progress
STATES = ("checking", "downloading", "verifying", "done", "failed", "cancelled")


# ----------------------------------------------------------------------------------- formatting
def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_duration(seconds: float | None) -> str:
    from core.fmt import duration

    return duration(seconds)


@dataclass
class DownloadProgress:
    """One progress report. Byte counts include what an earlier, interrupted attempt left."""

    repo_id: str
    hub: str
    state: str = "checking"
    done_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    files: int = 0
    message: str = ""
    path: str = ""
    error: str = ""
    advice: str = ""
    error_kind: str = ""  # the ModelError subclass name (HubUnreachable, NotEnoughDisk, ...), for the GUI

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def line(self) -> str:
        """The CLI's progress line."""
        where = f"[{self.hub}] {self.repo_id}"
        if self.state == "downloading":
            return (f"{where}  {fmt_bytes(self.done_bytes)} / {fmt_bytes(self.total_bytes)}  "
                    f"{100 * self.fraction:5.1f}%  {fmt_bytes(self.speed_bps)}/s  ETA {fmt_duration(self.eta_s)}")
        if self.state == "done":
            return f"{where}  done: {fmt_bytes(self.total_bytes)} in {fmt_duration(self.elapsed_s)} -> {self.path}"
        if self.state == "failed":
            return f"{where}  failed: {self.error}"
        return f"{where}  {self.message or self.state}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fraction"] = round(self.fraction, 4)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DownloadProgress:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class SpeedMeter:
    """Speed over the last ``window`` seconds, so a stall shows at once and a burst fades."""

    def __init__(self, window: float = 8.0):
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> float:
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0


def stderr_reporter(every: float = 5.0):
    """A progress callback printing a line to stderr at most every ``every`` seconds (train.log)."""
    last = [0.0]

    def report(p: DownloadProgress) -> None:
        now = time.monotonic()
        if p.finished or p.state != "downloading" or now - last[0] >= every:
            last[0] = now
            print(p.line(), file=sys.stderr, flush=True)

    return report


# -------------------------------------------------------------------------------------- planning
def select_files(listing: hubs.RepoListing) -> tuple[list[hubs.RepoFile], list[str]]:
    """The files worth downloading, and the ignore patterns that pick them."""
    ignore = list(IGNORE_ALWAYS)
    if any(f.path.endswith(".safetensors") for f in listing.files):
        ignore += list(IGNORE_WITH_SAFETENSORS)
    keep = [f for f in listing.files if not any(fnmatch.fnmatch(f.path, pat) for pat in ignore)]
    return keep, ignore


def missing_bytes(dest: Path, files: list[hubs.RepoFile]) -> int:
    """Bytes still to fetch: files absent or of the wrong size (partial ones count in full)."""
    need = 0
    for f in files:
        target = dest / f.path
        try:
            if target.is_file() and target.stat().st_size == f.size:
                continue
        except OSError:
            pass
        need += f.size
    return need


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(dest: Path, need: int, repo_id: str) -> None:
    """Refuse, with the numbers, when ``need`` more bytes will not fit next to ``dest``."""
    if need <= 0:
        return
    where = _existing_parent(dest)
    free = shutil.disk_usage(where).free
    if need + DISK_MARGIN_BYTES > free:
        raise NotEnoughDisk(
            f"Not enough disk space for {repo_id}: it needs {fmt_bytes(need)} more (plus "
            f"{fmt_bytes(DISK_MARGIN_BYTES)} to spare), but only {fmt_bytes(free)} is free on the disk "
            f"holding {where}.",
            "Free some space, or download to a bigger disk: `--cache-dir DIR` on the command line, or "
            "set QWENTUNE_MODELS_DIR=DIR before starting QwenTune.")


def _write_marker(dest: Path, listing: hubs.RepoListing, files: list[hubs.RepoFile]) -> None:
    from core.settings import write_json_atomic

    # Names the source only: no token, no URL with credentials, no environment.
    write_json_atomic(dest / MARKER, {
        "repo_id": listing.repo_id, "hub": listing.hub, "revision": listing.revision,
        "files": len(files), "bytes": sum(f.size for f in files),
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _wrong_files(dest: Path, files: list[hubs.RepoFile]) -> list[str]:
    bad = []
    for f in files:
        target = dest / f.path
        if not target.is_file():
            bad.append(f"{f.path} (missing)")
        elif f.size and target.stat().st_size != f.size:
            bad.append(f"{f.path} ({target.stat().st_size} of {f.size} bytes)")
    return bad


def download_repo(repo_id: str, hub: str, dest: str | os.PathLike, *, progress=None, alternative: str = "",
                  interval: float | None = None) -> Path:
    """Download (or resume) ``repo_id`` from ``hub`` into ``dest`` and return ``dest``.

    ``progress(DownloadProgress)`` is called about every ``interval`` seconds. ``alternative`` is the
    command for the other hub, named in the message when this hub cannot be reached.
    """
    hubs.check_hub(hub)
    interval = PROGRESS_INTERVAL_S if interval is None else interval
    dest = Path(dest)
    started = time.monotonic()
    report = DownloadProgress(repo_id=repo_id, hub=hub)

    def emit(**changes) -> None:
        for key, value in changes.items():
            setattr(report, key, value)
        report.elapsed_s = round(time.monotonic() - started, 2)
        if progress is not None:
            progress(DownloadProgress(**asdict(report)))

    emit(state="checking", message=f"asking {hubs.HUB_NAMES[hub]} for the file list")
    try:
        if hubs.offline_mode(hub):
            raise ConnectionError("offline mode")
        try:
            hubs.probe(hub)
        except OSError as exc:
            raise HubUnreachable(
                f"Cannot reach {hubs.HUB_NAMES[hub]} ({hubs.endpoint(hub)}) to download {repo_id}: {exc}.",
                hubs.unreachable_advice(repo_id, hub, alternative)) from None
        listing = hubs.list_repo_files(repo_id, hub)
    except Exception as exc:
        error = hubs.translate_error(exc, repo_id, hub, alternative)
        emit(state="failed", error=error.reason, advice=error.advice, error_kind=type(error).__name__)
        raise error from None
    files, ignore = select_files(listing)
    if not files:
        error = DownloadFailed(f"{repo_id} on {hubs.HUB_NAMES[hub]} has no model files.")
        emit(state="failed", error=error.reason, error_kind=type(error).__name__)
        raise error
    total = sum(f.size for f in files)
    try:
        check_disk(dest, missing_bytes(dest, files), repo_id)
    except NotEnoughDisk as error:
        emit(state="failed", total_bytes=total, files=len(files), error=error.reason, advice=error.advice,
             error_kind=type(error).__name__)
        raise
    dest.mkdir(parents=True, exist_ok=True)

    box: dict = {}

    def work() -> None:
        try:
            hubs.snapshot(repo_id, hub, dest, None, ignore, listing.revision)
        except BaseException as exc:  # re-raised in the calling thread below
            box["error"] = exc

    worker = threading.Thread(target=work, daemon=True, name=f"download-{repo_id}")
    worker.start()
    meter = SpeedMeter()
    emit(state="downloading", total_bytes=total, files=len(files), path=str(dest), message="")
    while True:
        worker.join(interval)
        done = min(total, _bytes_in(dest))
        speed = meter.add(time.monotonic(), done)
        eta = (total - done) / speed if speed > 0 else None
        if not worker.is_alive():
            break
        emit(done_bytes=done, speed_bps=round(speed, 1), eta_s=None if eta is None else round(eta, 1))
    if "error" in box:
        error = hubs.translate_error(box["error"], repo_id, hub, alternative)
        emit(state="failed", done_bytes=done, error=error.reason, advice=error.advice,
             error_kind=type(error).__name__)
        raise error from None
    emit(state="verifying", done_bytes=done, message="checking the files")
    wrong = _wrong_files(dest, files)
    if wrong:
        error = DownloadFailed(f"{repo_id}: the download ended but files are wrong: {', '.join(wrong[:5])}",
                               "Run the download again; complete files are kept.")
        emit(state="failed", error=error.reason, advice=error.advice, error_kind=type(error).__name__)
        raise error
    _write_marker(dest, listing, files)
    from core.models.local import check_model_dir

    check = check_model_dir(dest)
    if not check.ok:
        error = InvalidModelFolder(str(dest), check.problems)
        emit(state="failed", done_bytes=total, error=error.reason, error_kind=type(error).__name__)
        raise error
    emit(state="done", done_bytes=total, speed_bps=0.0, eta_s=0.0, message="")
    return dest


def _bytes_in(folder: Path) -> int:
    from core.models.local import dir_size

    return dir_size(folder) if folder.is_dir() else 0


# ------------------------------------------------------------------------------- background job
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
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return None, []
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn line
    if size > max_bytes and lines:
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


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(message, advice) for any error a download can raise."""
    if isinstance(exc, ModelError):
        return exc.reason, exc.advice
    return f"{type(exc).__name__}: {exc}", ""
