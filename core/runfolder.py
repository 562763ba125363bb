"""A run folder and its status: the one contract between the training worker, the GUI and the tools.

A run folder is rebuilt purely from disk, so the GUI can be reloaded or restarted at any time::

    runs/<name>/config.yaml         the resolved RunConfig
    runs/<name>/status.json         a :class:`Status`: state, pid, error + advice, step, GPU peaks
    runs/<name>/metrics.jsonl       one JSON line per logging step (one line per step after a resume)
    runs/<name>/train.log           the worker's stdout and stderr
    runs/<name>/accelerate.yaml     ddp / fsdp: the accelerate config the ranks were started with
    runs/<name>/checkpoints/        resumable trainer checkpoints (checkpoint-<step>/)
    runs/<name>/adapter/            the final LoRA adapter (PEFT format)
    runs/<name>/mix/                the inline mix built for this run (when the config had one)
    runs/<name>/mix_manifest.json   the manifest of the mix folder the run trained on (data.mix_dir)
    runs/<name>/eval.json           evaluation of the final adapter; eval-<checkpoint>.json per checkpoint
    runs/<name>/export/<format>/    exports (core.train.export)
    runs/<name>/jobs/               records and logs of export jobs started from the GUI (core.jobs)
    runs/<name>/stop                present while a graceful stop is requested
    runs/<name>/.claim              created first, atomically: the run name is taken (until the worker ends)
    runs/<name>/.reserve            disk space the worker holds while it runs, and .status.reserve: the
                                    room a failure report needs when the disk fills up (core.train.worker)

:class:`RunFolder` knows these paths and rules; :class:`Status` is status.json with its known fields.
This module imports nothing heavy (no torch, no config parsing at import time).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from core.errors import QwenTuneError
from core.settings import DamagedFile, read_json, read_tail, write_json_atomic

STATES = ("queued", "running", "stopping", "stopped", "done", "failed")
ACTIVE = ("queued", "running", "stopping")
# A queued run whose worker never wrote its pid within this time is reported as failed.
QUEUED_GRACE_S = 180.0


class RunError(QwenTuneError, RuntimeError):
    """A run folder operation that cannot be done (e.g. resuming a run that is still running)."""

    kind = "run"


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_iso(text: Any) -> float | None:
    if not text or not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# ------------------------------------------------------------------------------------ status
_NUMBER = (int, float)


@dataclass(eq=False)
class Status(Mapping):
    """status.json. Attribute access is typed; ``status["step"]`` and ``status.get("step")`` read the
    same fields (and, read-only, keys an older worker wrote that this version does not know)."""

    state: str = "failed"
    phase: str | None = None
    pid: int | None = None
    run: str | None = None  # the run's name as the worker saw it
    # times (ISO 8601, local offset)
    created: str | None = None  # written once, at the first start; resumes keep it
    queued: str | None = None
    started: str | None = None
    train_started: str | None = None
    finished: str | None = None
    updated: str | None = None
    # what is trained, and how
    stage: str | None = None
    rollout: str | None = None  # grpo: how completions are generated (vllm, chat, trl)
    strategy: str | None = None
    world_size: int | None = None  # processes (one per GPU) of a ddp / fsdp run
    gpus: list | None = None  # the GPU ids the run holds
    agent_pid: int | None = None  # ddp / fsdp: accelerate's launcher, started by the worker (``pid``)
    rank_pids: list | None = None  # ddp / fsdp: the rank processes, rank 0 first
    model: str | None = None
    method: str | None = None
    model_path: str | None = None
    backend: str | None = None
    dtype: str | None = None
    device: str | None = None
    mix_dir: str | None = None
    data: dict | None = None
    eval_data: dict | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    packing: str | None = None
    packing_reason: str | None = None
    packing_code: dict | None = None
    autocast: bool | None = None  # the forward passes autocast to the model's 16-bit dtype (train.autocast)
    # the micro-batch that ran (train.micro_batch auto: what core.train.autobatch chose, and why)
    micro_batch: int | None = None
    grad_accum: int | None = None
    effective_batch: int | None = None
    micro_batch_reason: str | None = None
    micro_batch_est_gib: float | None = None
    micro_batch_budget_gib: float | None = None
    notices: list | None = None
    notice_codes: list | None = None
    # progress
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    resumed_from: str | None = None
    # the end
    train_loss_avg: float | None = None
    train_runtime_s: float | None = None
    adapter: str | None = None
    peak_alloc_gib: float | None = None
    peak_reserved_gib: float | None = None
    nvml_used_gib: float | None = None  # the whole card's used memory (NVML), at its peak
    nvml_process_gib: float | None = None  # this run's own share of it, where NVML lists the process
    gpu_name: str | None = None
    error: str | None = None
    error_kind: str | None = None
    advice: str | None = None
    resumable: bool | None = None
    killed: bool | None = None
    lost: bool | None = None
    oom: bool | None = None
    disk_full: bool | None = None
    waiting_for: str | None = None
    # why status.json could not be read (then the rest is what read_status made of it)
    unreadable: str | None = None
    extra: dict = field(default_factory=dict, repr=False)  # keys this version does not know

    # Types each field must have when read back (JSON numbers may be int or float).
    _TYPES: ClassVar[dict[str, tuple]] = {}

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("extra",))

    @classmethod
    def check_fields(cls, names) -> None:
        known = set(cls.fields())
        bad = sorted(n for n in names if n not in known or n == "unreadable")
        if bad:
            raise TypeError(f"unknown status field(s) {bad}; known: {sorted(known - {'unreadable'})}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "status.json") -> Status:
        """Build from a status.json mapping; a known field of the wrong type is :class:`DamagedFile`."""
        if not isinstance(data, dict):
            raise DamagedFile(f"expected a JSON object, found {type(data).__name__}", where=source)
        known = set(cls.fields())
        kwargs, extra = {}, {}
        types = _field_types()
        for key, value in data.items():
            if key not in known or key == "unreadable":
                extra[key] = value
                continue
            want = types[key]
            if value is not None and not _has_type(value, want):
                raise DamagedFile(f"{key} is {value!r}, expected {_type_words(want)}", where=source)
            kwargs[key] = value
        if "state" in kwargs and kwargs["state"] not in STATES:
            raise DamagedFile(f"state is {kwargs['state']!r}, expected one of {list(STATES)}", where=source)
        if kwargs.get("state") is None:
            kwargs.pop("state", None)
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict:
        """What new code writes: the known fields that are set (never ``extra``)."""
        return {name: getattr(self, name) for name in self.fields()
                if getattr(self, name) is not None and name != "unreadable"}

    def update(self, **updates: Any) -> Status:
        """Set known fields in place (an unknown name is a TypeError); returns self."""
        self.check_fields(updates)
        for key, value in updates.items():
            setattr(self, key, value)
        return self

    # -- read-only mapping view, so code that reads status["step"] keeps working
    def __getitem__(self, key: str) -> Any:
        if key in _field_types():
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in _field_types() else self.extra.get(key)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self.fields() if getattr(self, n) is not None)
        yield from (k for k in self.extra if k not in _field_types())

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None or key in self.extra

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _field_types() -> dict[str, Any]:
    if not Status._TYPES:
        import typing

        hints = typing.get_type_hints(Status)
        Status._TYPES.update({n: hints[n] for n in Status.fields()})
    return Status._TYPES


def _base_types(tp: Any) -> tuple:
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) if a is not type(None) for t in _base_types(a))
    if tp is float:
        return _NUMBER
    return (typing.get_origin(tp) or tp,)


def _has_type(value: Any, tp: Any) -> bool:
    allowed = _base_types(tp)
    if isinstance(value, bool) and bool not in allowed:
        return False
    return isinstance(value, allowed)


def _type_words(tp: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false", dict: "an object",
             list: "a list"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in _base_types(tp)))


def pid_alive(pid: Any) -> bool:
    """True if ``pid`` is a live (not zombie) process that looks like a QwenTune worker."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            return False
        # A recycled pid belongs to some other program: not our worker.
        return b"core" in cmdline or b"pytest" in cmdline or b"python" in cmdline
    return True


# -------------------------------------------------------------------------------- the folder
@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        """The trainer finished writing it (trainer_state.json is written last): resumable."""
        return (self.path / "trainer_state.json").is_file()

    @property
    def has_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()


class RunFolder:
    """Paths and rules of one run folder. Cheap to make; reads the disk only when asked."""

    CONFIG = "config.yaml"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    SAMPLES = "samples.jsonl"
    LOG = "train.log"
    STOP_FLAG = "stop"
    ADAPTER = "adapter"
    CHECKPOINTS = "checkpoints"
    MIX = "mix"
    MIX_MANIFEST = "mix_manifest.json"
    EVAL = "eval.json"
    EXPORT = "export"
    JOBS = "jobs"
    CLAIM = ".claim"
    ADAPTER_CONFIG = "adapter_config.json"
    # Folders of a run that hold the run's own working files, not exports a user might serve.
    INTERNAL_DIRS = (CHECKPOINTS, MIX, ADAPTER, JOBS, "evalscope", "tensorboard")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- paths
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def samples(self) -> Path:
        """GRPO's sampled completions, a few per logging step: one JSON line each, {"step", "prompt",
        "completion", "rewards": {name: value}, "answer"}."""
        return self.path / self.SAMPLES

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def stop_flag(self) -> Path:
        return self.path / self.STOP_FLAG

    @property
    def adapter(self) -> Path:
        return self.path / self.ADAPTER

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def mix(self) -> Path:
        return self.path / self.MIX

    @property
    def mix_manifest(self) -> Path:
        return self.path / self.MIX_MANIFEST

    @property
    def jobs_dir(self) -> Path:
        return self.path / self.JOBS

    @property
    def claim_path(self) -> Path:
        return self.path / self.CLAIM

    def export_dir(self, fmt: str) -> Path:
        return self.path / self.EXPORT / fmt

    def eval_result(self, target: str | os.PathLike | None = None) -> Path:
        """Where the evaluation of ``target`` (the run, its adapter, or one checkpoint) is saved."""
        if target is None:
            return self.path / self.EVAL
        target = Path(target).expanduser().resolve()
        here = self.path.resolve()
        if target in (here, here / self.ADAPTER):
            return self.path / self.EVAL
        return self.path / f"eval-{target.name}.json"

    # -- what it is
    def is_run(self) -> bool:
        """A run folder: it has its config or its status (a leftover holding only a temp file is not)."""
        return self.config.is_file() or self.status_path.is_file()

    def has_adapter(self) -> bool:
        return (self.adapter / self.ADAPTER_CONFIG).is_file()

    @classmethod
    def enclosing(cls, path: str | os.PathLike, levels: int = 3) -> RunFolder | None:
        """The run folder that is ``path`` or holds it (a checkpoint, the adapter, an export), up to
        ``levels`` folders up; None if there is none."""
        p = Path(path).expanduser()
        for candidate in (p, *list(p.parents)[:levels]):
            folder = cls(candidate)
            if folder.config.is_file():
                return folder
        return None

    # -- checkpoints
    def checkpoints(self, *, complete: bool = False, with_adapter: bool = False) -> list[Checkpoint]:
        """``checkpoint-<step>`` folders, oldest first; ``complete``: resumable ones only;
        ``with_adapter``: only those holding a PEFT adapter (what chat and eval can load)."""
        root = self.checkpoints_dir
        if not root.is_dir():
            return []
        found = []
        for p in root.glob("checkpoint-*"):
            try:
                step = int(p.name.split("-", 1)[1])
            except ValueError:
                continue
            ckpt = Checkpoint(step, p)
            if p.is_dir() and (not complete or ckpt.complete) and (not with_adapter or ckpt.has_adapter):
                found.append(ckpt)
        return sorted(found, key=lambda c: c.step)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest complete (resumable) checkpoint."""
        found = self.checkpoints(complete=True)
        return found[-1] if found else None

    # -- status
    def read_status_raw(self) -> Status | None:
        """status.json as written (None when missing); damaged -> :class:`DamagedFile`."""
        data = read_json(self.status_path)
        if data is None:
            return None
        return Status.from_dict(data, source=str(self.status_path))

    def write_status(self, status: Status) -> Status:
        status.updated = now_iso()
        write_json_atomic(self.status_path, status.to_dict())
        return status

    def update_status(self, **updates: Any) -> Status:
        """Merge ``updates`` (known field names only) into status.json, atomically. Only the process
        that owns the run calls this. A damaged status.json is replaced."""
        Status.check_fields(updates)
        try:
            status = self.read_status_raw() or Status()
        except DamagedFile:
            status = Status()
        return self.write_status(status.update(**updates))

    def status(self) -> Status:
        """status.json as the GUI should show it; never raises for a damaged folder.

        A run that claims to be active but whose process is gone (kill -9, a crash, a reboot) is
        reported as ``failed`` with ``resumable`` set; a running run whose stop file is present as
        ``stopping``; a status.json that cannot be read as ``failed`` with ``unreadable`` saying why.
        """
        try:
            status = self.read_status_raw()
        except DamagedFile as exc:
            return Status(state="failed", unreadable=exc.message,
                          error=f"unreadable: {self.STATUS}: {exc.message}", resumable=False,
                          advice="Fix or delete the damaged file; the rest of the run folder is kept.")
        if status is None:
            return Status(state="failed", error="no status.json: not a run folder, or it was never started")
        if status.state in ACTIVE:
            if status.pid:
                dead = not pid_alive(status.pid)
            else:
                queued_at = parse_iso(status.queued)
                if queued_at is None:
                    try:
                        queued_at = self.status_path.stat().st_mtime
                    except OSError:
                        queued_at = 0.0
                dead = time.time() - queued_at > QUEUED_GRACE_S
            if dead:
                ckpt = self.latest_checkpoint()
                status.update(
                    state="failed", lost=True, resumable=True, error_kind=status.error_kind or "run",
                    error=status.error or "The training process ended without saying why (killed, "
                                          "crashed, or the machine restarted). See train.log.",
                    advice=status.advice or ("Resume continues from " + ckpt.name if ckpt else
                                             "Resume starts again from step 0 (no checkpoint yet)."),
                )
            elif status.state == "running" and self.stop_flag.exists():
                status.state = "stopping"
        elif status.state in ("stopped", "failed") and status.resumable is None:
            status.resumable = True
        return status

    # -- metrics and log
    def read_metrics(self) -> list[dict]:
        """metrics.jsonl, one row per step (a later line for the same step replaces an earlier one:
        a resumed run logs the steps after its checkpoint again). A torn or damaged line (the writer
        was killed mid-line, a disk error) is skipped; an unreadable file reads as no rows."""
        import json

        rows: list[dict] = []
        index: dict[tuple, int] = {}
        try:
            with self.metrics.open("rb") as f:
                for raw in f:
                    try:
                        row = json.loads(raw.decode("utf-8"))
                    except (UnicodeDecodeError, ValueError, RecursionError):
                        continue
                    if not isinstance(row, dict):
                        continue
                    step = row.get("step")
                    key = (step, "eval_loss" in row and row.get("loss") is None and row.get("eval_loss") is not None)
                    if isinstance(step, int) and key in index:
                        rows[index[key]] = row
                        continue
                    if isinstance(step, int):
                        index[key] = len(rows)
                    rows.append(row)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            return rows
        return rows

    def read_samples(self, max_bytes: int = 64000) -> list[dict]:
        """The newest lines of samples.jsonl (oldest first); a torn or damaged line is skipped."""
        import json

        try:
            data, cut = read_tail(self.samples, max_bytes)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            return []
        lines = data.split(b"\n")
        if cut:
            lines = lines[1:]
        out = []
        for raw in lines:
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                out.append(row)
        return out

    def read_log_tail(self, max_bytes: int = 8000) -> str:
        try:
            data, cut = read_tail(self.log, max_bytes)
        except (FileNotFoundError, NotADirectoryError):
            return ""
        text = data.decode("utf-8", errors="replace")
        if cut:
            text = text.split("\n", 1)[-1]
        return text
