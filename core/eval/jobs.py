"""Background work the Evaluate & Export tab starts and then watches: evaluations and exports.

An evaluation runs in a thread of the web server and shares the chat's model cache, so the model is
in memory once. An export runs the trainer's CLI (`python -m core export --run DIR --format F`) as a
subprocess writing ``<run>/export.log``. Both are kept per run folder in an instance the tab creates,
so a page reload finds them still running (or finished) and shows their progress again.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from core.choices import EXPORT_FORMATS
from core.config import ChatConfig, EvalConfig

ROOT = Path(__file__).resolve().parent.parent.parent
EXPORT_LOG = "export.log"


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
    run_dir: str
    fmt: str
    proc: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)
    error: str = ""

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        rc = self.returncode
        return "running" if rc is None else ("done" if rc == 0 else "failed")

    def log_tail(self, max_bytes: int = 6000) -> str:
        path = Path(self.run_dir) / EXPORT_LOG
        try:
            data = path.read_bytes()[-max_bytes:]
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")


def export_available() -> bool:
    return importlib.util.find_spec("core.commands.export") is not None


def export_command(run_dir: str | Path, fmt: str) -> list[str]:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    # Pressing Export again means "export again": replace the previous output of this format.
    return [sys.executable, "-m", "core", "export", "--run", str(run_dir), "--format", fmt, "--overwrite", "true"]


class ExportJobs:
    """Exports started from the GUI: one subprocess at a time per run folder."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, ExportJob] = {}

    def get(self, run_dir: str | Path) -> ExportJob | None:
        with self._lock:
            return self._jobs.get(str(Path(run_dir).resolve()))

    def start(self, run_dir: str | Path, fmt: str) -> ExportJob:
        key = str(Path(run_dir).resolve())
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == "running":
                return job
            job = ExportJob(run_dir=key, fmt=fmt)
            self._jobs[key] = job
        if not export_available():
            job.error = "export is not available in this build (core/commands/export.py is missing)"
            return job
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with (Path(key) / EXPORT_LOG).open("ab") as log:
            log.write(f"\n$ {' '.join(export_command(key, fmt))}\n".encode())
            log.flush()
            job.proc = subprocess.Popen(export_command(key, fmt), cwd=str(ROOT), stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        # Reap the child when it ends so it never lingers as a zombie.
        threading.Thread(target=job.proc.wait, daemon=True, name=f"export-{job.proc.pid}").start()
        return job
