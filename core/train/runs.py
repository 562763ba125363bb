"""Run folders: starting, stopping, resuming, listing and reading runs (the layout and status
rules live in :mod:`core.runfolder`).

Only the worker writes status.json while it lives. The GUI never trains in-process: it starts
``python -m core train`` as a detached process (:func:`start_run`), asks it to stop through the stop
file (:func:`request_stop`), or kills it (:func:`kill_run`, after which it writes the final status
itself because the worker cannot).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.procs import ROOT
from core.runfolder import ACTIVE, STATES, RunError, RunFolder, Status, now_iso, parse_iso, pid_alive
from core.settings import ConfigError, DamagedFile

STATUS = RunFolder.STATUS
METRICS = RunFolder.METRICS
LOG = RunFolder.LOG
CONFIG = RunFolder.CONFIG
STOP_FLAG = RunFolder.STOP_FLAG
ADAPTER = RunFolder.ADAPTER
CHECKPOINTS = RunFolder.CHECKPOINTS
MIX = RunFolder.MIX
GPU_LOCK = ".gpu.lock"
# An empty claim file this old belongs to a start that died between creating it and writing its pid.
CLAIM_GRACE_S = 30.0

__all__ = ["ACTIVE", "ROOT", "STATES", "RunError", "RunFolder", "Status", "now_iso", "parse_iso", "pid_alive"]


# ------------------------------------------------------------------------------------ status
def write_status(run_dir: str | Path, **updates: Any) -> Status:
    """Merge ``updates`` into status.json (atomic; known fields only). Only the run's owner calls this.

    In a rank other than 0 of a ddp / fsdp run nothing is written (rank 0 writes for the run): the
    status is returned as it would read with the updates, so callers behave alike on every rank."""
    from core.train.launch import writes_run_folder

    folder = RunFolder(run_dir)
    if not writes_run_folder():
        Status.check_fields(updates)
        try:
            status = folder.read_status_raw() or Status()
        except DamagedFile:
            status = Status()
        return status.update(**updates)
    return folder.update_status(**updates)


def read_status(run_dir: str | Path) -> Status:
    """status.json as the GUI should show it (see :meth:`RunFolder.status`)."""
    return RunFolder(run_dir).status()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl as a list, one row per step; torn or damaged lines are skipped."""
    return RunFolder(run_dir).read_metrics()


def read_log_tail(run_dir: str | Path, max_bytes: int = 8000) -> str:
    return RunFolder(run_dir).read_log_tail(max_bytes)


# ------------------------------------------------------------------------------------ listing
def is_run_dir(path: str | Path) -> bool:
    return RunFolder(path).is_run()


def run_summary(run_dir: str | Path) -> dict:
    """One row of the runs list. A folder whose files cannot be read still gets a row: its state is
    ``failed`` and its ``error`` starts with "unreadable:" and says why."""
    folder = RunFolder(run_dir)
    status = folder.status()
    # "created" is written once, when the run is first started; "queued" / "started" are rewritten by
    # every resume (runs from before "created" existed fall back to them).
    created = parse_iso(status.created or status.queued or status.started)
    if created is None:
        try:
            created = (folder.config if folder.config.exists() else folder.path).stat().st_mtime
        except OSError:
            created = 0.0
    return {
        "name": folder.name,
        "path": str(folder.path),
        "state": status.state,
        "model": status.model or "",
        "method": status.method or "",
        "backend": status.backend or "",
        "step": status.step or 0,
        "total_steps": status.total_steps or 0,
        "loss": status.loss,
        "created": created,
        "has_adapter": folder.has_adapter(),
        "status": status,
        "unreadable": status.unreadable or "",
    }


def _unreadable_summary(run_dir: Path, why: str) -> dict:
    status = Status(state="failed", unreadable=why, error=f"unreadable: {why}", resumable=False)
    try:
        created = run_dir.stat().st_mtime
    except OSError:
        created = 0.0
    return {"name": run_dir.name, "path": str(run_dir), "state": "failed", "model": "", "method": "",
            "backend": "", "step": 0, "total_steps": 0, "loss": None, "created": created, "has_adapter": False,
            "status": status, "unreadable": why}


def list_runs(runs_dir: str | Path) -> list[dict]:
    """Every run folder under ``runs_dir``, newest first, built from the folders alone. One folder
    that cannot be read is listed as unreadable; it never hides the others."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        try:
            if not (p.is_dir() and is_run_dir(p)):
                continue
            runs.append(run_summary(p))
        except (OSError, DamagedFile, ValueError, TypeError) as exc:
            runs.append(_unreadable_summary(p, f"{type(exc).__name__}: {exc}"))
    runs.sort(key=lambda r: r["created"], reverse=True)
    return runs


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer_state.json was written)."""
    ckpt = RunFolder(run_dir).latest_checkpoint()
    return ckpt.path if ckpt else None


# ---------------------------------------------------------------------------------- model paths
@dataclass
class RunModel:
    """What the chat / eval code needs to load a run's model."""

    base: str  # local folder of the base model
    adapter: str | None  # PEFT adapter folder (final adapter, else the latest checkpoint), or None
    method: str  # lora | qlora
    name_or_path: str  # as written in the config
    load_in_4bit: bool  # how the base was trained


def recorded_base(run_dir: str | Path) -> tuple[str | None, str | None]:
    """(exact local base-model folder the worker trained on, method it used), as status.json has
    them; the folder only when it still exists. (None, None) for what is not known."""
    try:
        status = RunFolder(run_dir).read_status_raw() or Status()
    except DamagedFile:
        status = Status()
    base = status.model_path if status.model_path and Path(status.model_path).is_dir() else None
    return base, status.method


def run_model_paths(run_dir: str | Path) -> RunModel:
    """Base model folder and adapter folder of a run (the adapter of the newest checkpoint while the
    run is still going)."""
    from core.config import load_run_config

    folder = RunFolder(run_dir)
    cfg = load_run_config(folder.config)
    base, method = recorded_base(folder.path)
    if not base:
        from core.train.backends import resolve_model_path

        base = str(resolve_model_path(cfg.model))
    adapter = None
    if folder.has_adapter():
        adapter = str(folder.adapter)
    else:
        ckpt = folder.latest_checkpoint()
        if ckpt is not None and ckpt.has_adapter:
            adapter = str(ckpt.path)
    method = method or cfg.model.method
    return RunModel(base=base, adapter=adapter, method=method, name_or_path=cfg.model.name_or_path,
                    load_in_4bit=method == "qlora")


# ------------------------------------------------------------------------------ starting / stopping
def new_run_name(model_name: str, method: str) -> str:
    base = Path(model_name.rstrip("/")).name or "model"
    base = "".join(c if c.isalnum() or c in "-._" else "-" for c in base).strip("-.") or "model"
    return f"{base}-{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _worker_args(run_dir: Path, resume: bool) -> list[str]:
    """The worker is always given the run folder itself: the folder is the run. Whatever the
    strategy, it is ``python -m core train RUN_DIR`` (core.train.launch.worker_command): for ddp /
    fsdp that process is the launcher parent of the ranks."""
    from core.train.launch import worker_command

    return worker_command(run_dir, resume=resume)[3:]


def _spawn(args: list[str], run_dir: Path):
    from core.procs import spawn_core

    return spawn_core(args, RunFolder(run_dir).log)


def claim_run_dir(run_dir: str | Path) -> Path:
    """Take the run name: create the run folder and its claim file atomically, before anything else
    is written. Exactly one of several starts with the same name wins; the others get RunError.

    A leftover folder that holds no run (no config.yaml, no status.json: only a temp file, or the
    claim of a start whose process is gone) does not block the name: it is claimed like an empty one.
    """
    folder = RunFolder(run_dir)
    folder.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.path.mkdir()
    except FileExistsError:
        if not folder.path.is_dir():
            raise RunError(f"{folder.path} exists and is not a folder; choose another name") from None
        if folder.is_run():
            raise RunError(f"run folder {folder.path} already exists; choose another name or resume it") from None
    for _attempt in range(2):
        try:
            fd = os.open(folder.claim_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _take_stale_claim(folder):
                continue
            raise RunError(f"run name {folder.name!r} is being started by another process; choose another "
                           "name", where=str(folder.path)) from None
        break
    else:
        raise RunError(f"run name {folder.name!r} is being started by another process; choose another name",
                       where=str(folder.path))
    try:
        os.write(fd, f"{os.getpid()} {now_iso()}\n".encode())
    finally:
        os.close(fd)
    if folder.is_run():  # a run written between our mkdir and our claim (an older worker): not ours
        folder.claim_path.unlink(missing_ok=True)
        raise RunError(f"run folder {folder.path} already exists; choose another name or resume it")
    return folder.path


def _claim_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


def _take_stale_claim(folder: RunFolder) -> bool:
    """Remove the claim of a start that died before writing its run (its pid is gone); True if it
    was removed, so the caller may claim again. Of two takers of one stale claim only one moves it
    (a rename succeeds once); a taker that moved a fresh claim by mistake puts it back."""
    pid = _claim_pid(folder.claim_path)
    if folder.is_run() or (pid is not None and pid_alive(pid)):
        return False
    if pid is None:  # being written right now, unless it has been empty for a while
        try:
            if time.time() - folder.claim_path.stat().st_mtime < CLAIM_GRACE_S:
                return False
        except FileNotFoundError:
            return True
    moved = folder.path / f".claim.stale.{os.getpid()}"
    try:
        os.rename(folder.claim_path, moved)
    except FileNotFoundError:
        return True  # another taker moved it first: try to claim again
    if _claim_pid(moved) != pid:  # it was replaced by a live claim between our read and our rename
        try:
            os.link(moved, folder.claim_path)
        except FileExistsError:
            pass
        moved.unlink(missing_ok=True)
        return False
    moved.unlink(missing_ok=True)
    return True


def start_run(config, runs_dir: str | Path | None = None, name: str | None = None) -> Path:
    """Create ``runs_dir/<name>/`` with the resolved config and start the worker detached.

    ``config`` is a RunConfig or a path to a YAML file. Returns the run folder; the worker writes
    status.json from then on. Raises ConfigError for a bad config, RunError if the name is taken.
    """
    from core.config import RunConfig, load_run_config
    from core.settings import dump_yaml
    from core.train.launch import plan

    if isinstance(config, (str, os.PathLike)):
        cfg = load_run_config(config)
    elif isinstance(config, RunConfig):
        import copy

        cfg = copy.deepcopy(config)
    else:
        raise TypeError(f"config must be a RunConfig or a YAML path, not {type(config).__name__}")
    plan(cfg)  # a train.gpus naming GPUs this machine lacks is refused here, before a folder exists
    runs_root = Path(runs_dir if runs_dir is not None else cfg.runs_dir).resolve()
    cfg.runs_dir = str(runs_root)
    cfg.name = name or cfg.name or new_run_name(cfg.model.name_or_path, cfg.model.method)
    check_run_name(cfg.name)
    run_dir = claim_run_dir(runs_root / cfg.name)
    folder = RunFolder(run_dir)
    dump_yaml(cfg, folder.config, header=config_header(run_dir))
    folder.write_status(Status(state="queued", created=now_iso(), queued=now_iso(), step=0, total_steps=0,
                               model=cfg.model.name_or_path, method=cfg.model.method))
    _spawn(_worker_args(run_dir, resume=False), run_dir)
    return run_dir


def config_header(run_dir: Path) -> str:
    return f"QwenTune run config (resolved). Resume with:\n  python -m core train {run_dir} --resume"


def check_run_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"{name!r} is not a usable folder name", "name")


def request_stop(run_dir: str | Path) -> None:
    """Ask the worker to stop after the current step; it saves the adapter and ends as ``stopped``."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status["state"] not in ACTIVE:
        raise RunError(f"run {run_dir.name} is not running (state: {status['state']})")
    (run_dir / STOP_FLAG).write_text(now_iso() + "\n", encoding="utf-8")


def kill_run(run_dir: str | Path, timeout: float = 10.0) -> dict:
    """Stop now: kill the worker at once. The newest checkpoint stays, so the run can be resumed."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    pid = status.get("pid")
    if status["state"] not in ACTIVE and not pid_alive(pid):
        raise RunError(f"run {run_dir.name} is not running (state: {status['state']})")
    if pid and pid_alive(pid):
        _kill_group_or_pid(pid)
    # A ddp / fsdp run: accelerate's launcher and each rank lead sessions of their own.
    others = [p for p in [status.get("agent_pid"), *(status.get("rank_pids") or [])] if p != pid and pid_alive(p)]
    for other in others:
        _kill_group_or_pid(other)
    deadline = time.time() + timeout
    while any(pid_alive(p) for p in [pid, *others] if p) and time.time() < deadline:
        time.sleep(0.05)
    ckpt = latest_checkpoint(run_dir)
    (run_dir / STOP_FLAG).unlink(missing_ok=True)
    return write_status(
        run_dir, state="stopped", killed=True, resumable=True, finished=now_iso(),
        error=None, advice=("Stopped at once; resume continues from " + ckpt.name) if ckpt else
        "Stopped at once before the first checkpoint; resume starts again from step 0.",
    )


def _kill_group_or_pid(pid: int) -> None:
    """SIGKILL ``pid`` and, when it leads its own process group (the GUI starts the worker in a
    session of its own), its children too."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def resume_run(run_dir: str | Path) -> Path:
    """Start the worker again on an existing run; it continues from the newest checkpoint."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / CONFIG).is_file():
        raise RunError(f"{run_dir} has no {CONFIG}; it is not a run folder")
    status = read_status(run_dir)
    if status["state"] in ACTIVE:
        raise RunError(f"run {run_dir.name} is still {status['state']}")
    if status["state"] == "done":
        raise RunError(f"run {run_dir.name} already finished; start a new run to train longer")
    if status.unreadable:
        raise RunError(f"run {run_dir.name} cannot be resumed: {status.error}")
    (run_dir / STOP_FLAG).unlink(missing_ok=True)
    write_status(run_dir, state="queued", pid=None, agent_pid=None, rank_pids=None, queued=now_iso(), error=None,
                 error_kind=None, advice=None, killed=False, lost=False, disk_full=None, oom=None)
    _spawn(_worker_args(run_dir, resume=True), run_dir)
    return run_dir


def delete_run(run_dir: str | Path) -> None:
    import shutil

    run_dir = Path(run_dir)
    if read_status(run_dir)["state"] in ACTIVE:
        raise RunError(f"run {run_dir.name} is still running; stop it first")
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a run folder")
    shutil.rmtree(run_dir)
