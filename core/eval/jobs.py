"""Background work the Evaluate & Export tab starts and then watches: evaluations and exports.

An evaluation runs in a thread of the web server and shares the chat's model cache, so the model is
in memory once. An export runs the trainer's CLI (`python -m core export --run DIR --format F`) as a
subprocess (core.procs.spawn_core) with its record and log in ``<run>/jobs/``. Both are kept per run
folder in an instance the tab creates, so a page reload finds them still running (or finished); an
export is also found again from its record after the server restarts.
"""

from __future__ import annotations

import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from core.choices import EXPORT_FORMATS
from core.config import ChatConfig, EvalConfig


class Cancelled(Exception):
    pass


@dataclass
class EvalJob:
    target: str
    state: str = "running"  # running | done | failed | cancelled
    stage: str = "start"
    done: int = 0
    total: int = 0
    result: dict | None = None
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, stage: str, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        self.stage, self.done, self.total = stage, done, total

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class EvalJobs:
    """Evaluations keyed by the run (or checkpoint) folder; one at a time per folder."""

    def __init__(self, models=None):
        self.models = models  # a core.chat.loader.ModelCache shared with the chat tab, or None
        self._lock = threading.Lock()
        self._jobs: dict[str, EvalJob] = {}

    def get(self, target: str) -> EvalJob | None:
        with self._lock:
            return self._jobs.get(str(Path(target).resolve()))

    def start(self, target: str, cfg: EvalConfig, chat_cfg: ChatConfig, *, runs_dir=None,
              limit: int | None = None) -> EvalJob:
        key = str(Path(target).resolve())
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            job = EvalJob(target=key)
            self._jobs[key] = job
        threading.Thread(target=self._run, args=(job, cfg, chat_cfg, runs_dir, limit), daemon=True,
                         name=f"eval-{Path(key).name}").start()
        return job

    def _run(self, job: EvalJob, cfg: EvalConfig, chat_cfg: ChatConfig, runs_dir, limit) -> None:
        from core.eval.evaluate import evaluate

        try:
            engine = None
            if self.models is not None:
                from core.chat.loader import resolve_target

                job.progress("load", 0, 1)
                engine = self.models.load(resolve_target(job.target, chat_cfg, runs_dir=runs_dir), chat_cfg,
                                          runs_dir=runs_dir)
            job.result = evaluate(job.target, cfg, chat_cfg, engine=engine, progress=job.progress, limit=limit,
                                  runs_dir=runs_dir)
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
        except Exception as exc:  # shown in the tab; the traceback goes to the server log
            traceback.print_exc()
            job.error = f"{type(exc).__name__}: {exc}"
            job.state = "failed"
        finally:
            job.finished = time.time()


@dataclass
class ExportJob:
    """One export of a run: a ``python -m core export`` subprocess and its record on disk
    (``<run>/jobs/export-<format>.json`` + ``.log``, see :mod:`core.procs`)."""

    run_dir: str
    fmt: str
    record: str = ""  # the job record's path; "" for an export that could not start
    proc: subprocess.Popen | None = None  # only in the server process that started it
    started: float = field(default_factory=time.time)
    error: str = ""

    def _record(self):
        from core.procs import JobRecord

        return JobRecord.read(self.record) if self.record else None

    @property
    def returncode(self) -> int | None:
        if self.proc is not None and self.proc.poll() is not None:
            return self.proc.returncode
        rec = self._record()
        return rec.returncode if rec is not None else None

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return "running"
            rec = self._record()
            if rec is None or rec.state == "running":  # ended before it could write its record
                return "done" if rc == 0 else "failed"
            return rec.state
        rec = self._record()
        return rec.state if rec is not None else "failed"

    def log_tail(self, max_bytes: int = 6000) -> str:
        rec = self._record()
        return rec.log_tail(max_bytes) if rec is not None else ""


def export_args(run_dir: str | Path, fmt: str) -> list[str]:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    # Pressing Export again means "export again": replace the previous output of this format.
    return ["export", "--run", str(run_dir), "--format", fmt, "--overwrite", "true"]


def export_command(run_dir: str | Path, fmt: str) -> list[str]:
    from core.procs import core_command

    return core_command(export_args(run_dir, fmt))


def _record_path(run_dir: str | Path, fmt: str) -> Path:
    from core.runfolder import RunFolder

    return RunFolder(run_dir).jobs_dir / f"export-{fmt}.json"


class ExportJobs:
    """Exports started from the GUI: one subprocess at a time per run folder. Jobs are found again
    from their records in the run folder, so a restarted server still shows a running or finished
    export."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, ExportJob] = {}

    def _from_disk(self, key: str) -> ExportJob | None:
        from core.procs import JobRecord
        from core.runfolder import parse_iso

        newest = None
        for fmt in EXPORT_FORMATS:
            path = _record_path(key, fmt)
            rec = JobRecord.read(path)
            if rec is None:
                continue
            started = parse_iso(rec.started) or 0.0
            if newest is None or started > newest.started:
                newest = ExportJob(run_dir=key, fmt=fmt, record=str(path), started=started)
        return newest

    def get(self, run_dir: str | Path) -> ExportJob | None:
        key = str(Path(run_dir).resolve())
        with self._lock:
            job = self._jobs.get(key)
        return job if job is not None else self._from_disk(key)

    def start(self, run_dir: str | Path, fmt: str) -> ExportJob:
        from core.procs import spawn_core

        key = str(Path(run_dir).resolve())
        with self._lock:
            job = self._jobs.get(key) or self._from_disk(key)
            if job is not None and job.state == "running":
                return job
            record = _record_path(key, fmt)
            job = ExportJob(run_dir=key, fmt=fmt, record=str(record))
            self._jobs[key] = job
            try:
                job.proc = spawn_core(export_args(key, fmt), record.with_suffix(".log"), record=record,
                                      kind="export", info={"run": key, "format": fmt}, header=True)
            except OSError as exc:
                job.error = f"the export could not start: {exc}"
        return job
