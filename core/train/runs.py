"""Run folders: the one contract between the training worker, the GUI and the other tools.

A run folder is rebuilt purely from disk, so the GUI can be reloaded or restarted at any time::

    runs/<name>/config.yaml     the resolved RunConfig
    runs/<name>/status.json     state, pid, error + advice, backend, step, GPU peaks (atomic writes)
    runs/<name>/metrics.jsonl   one JSON line per logging step
    runs/<name>/train.log       the worker's stdout and stderr
    runs/<name>/checkpoints/    resumable trainer checkpoints (checkpoint-<step>/)
    runs/<name>/adapter/        the final LoRA adapter (PEFT format)
    runs/<name>/mix/            the inline mix built for this run (when the config had one)
    runs/<name>/stop            present while a graceful stop is requested

Only the worker writes status.json while it lives. The GUI never trains in-process: it starts
``python -m core train`` as a detached process (:func:`start_run`), asks it to stop through the stop
file (:func:`request_stop`), or kills it (:func:`kill_run`, after which it writes the final status
itself because the worker cannot).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.settings import ConfigError, write_json_atomic

STATUS = "status.json"
METRICS = "metrics.jsonl"
LOG = "train.log"
CONFIG = "config.yaml"
STOP_FLAG = "stop"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
MIX = "mix"
GPU_LOCK = ".gpu.lock"

STATES = ("queued", "running", "stopping", "stopped", "done", "failed")
ACTIVE = ("queued", "running", "stopping")
ROOT = Path(__file__).resolve().parent.parent.parent
# A queued run whose worker never wrote its pid within this time is reported as failed.
QUEUED_GRACE_S = 180.0


class RunError(RuntimeError):
    """A run folder operation that cannot be done (e.g. resuming a run that is still running)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# ------------------------------------------------------------------------------------ status
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # Writes are atomic, so this is a damaged file, not a half-written one.
        return {"state": "failed", "error": f"{path.name} is unreadable ({exc})"}


def write_status(run_dir: str | Path, **updates: Any) -> dict:
    """Merge ``updates`` into status.json (atomic). Only the process that owns the run calls this."""
    path = Path(run_dir) / STATUS
    status = _read_json(path) or {}
    status.update(updates)
    status["updated"] = now_iso()
    write_json_atomic(path, status)
    return status


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` is a live (not zombie) process that looks like a QwenTune worker."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
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


def read_status(run_dir: str | Path) -> dict:
    """status.json as the GUI should show it.

    A run that claims to be active but whose process is gone (kill -9, a crash, a reboot) is
    reported as ``failed`` with ``resumable`` set when a checkpoint exists; a run whose stop file
    is present is reported as ``stopping``.
    """
    run_dir = Path(run_dir)
    status = _read_json(run_dir / STATUS)
    if status is None:
        status = {"state": "failed", "error": "no status.json: not a run folder, or it was never started"}
    status.setdefault("state", "failed")
    state = status["state"]
    if state in ACTIVE:
        pid = status.get("pid")
        if pid:
            dead = not pid_alive(pid)
        else:
            queued_at = parse_iso(status.get("queued")) or (run_dir / STATUS).stat().st_mtime
            dead = time.time() - queued_at > QUEUED_GRACE_S
        if dead:
            ckpt = latest_checkpoint(run_dir)
            status.update(
                state="failed", lost=True, resumable=True,
                error=status.get("error") or "The training process ended without saying why (killed, "
                      "crashed, or the machine restarted). See train.log.",
                advice=status.get("advice") or ("Resume continues from " + ckpt.name if ckpt else
                                                "Resume starts again from step 0 (no checkpoint yet)."),
            )
        elif state == "running" and (run_dir / STOP_FLAG).exists():
            status["state"] = "stopping"
    elif state in ("stopped", "failed"):
        status.setdefault("resumable", True)
    return status


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl as a list; a torn last line (the writer was killed mid-line) is skipped."""
    path = Path(run_dir) / METRICS
    out = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return []
    return out


def read_log_tail(run_dir: str | Path, max_bytes: int = 8000) -> str:
    path = Path(run_dir) / LOG
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]
    return text


# ------------------------------------------------------------------------------------ listing
def is_run_dir(path: Path) -> bool:
    return (path / STATUS).is_file() or (path / CONFIG).is_file()


def run_summary(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    # "created" is written once, when the run is first started; "queued" / "started" are rewritten by
    # every resume (runs from before "created" existed fall back to them).
    created = parse_iso(status.get("created") or status.get("queued") or status.get("started"))
    if created is None:
        created = (run_dir / CONFIG).stat().st_mtime if (run_dir / CONFIG).exists() else run_dir.stat().st_mtime
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "state": status.get("state"),
        "model": status.get("model", ""),
        "method": status.get("method", ""),
        "backend": status.get("backend", ""),
        "step": status.get("step", 0),
        "total_steps": status.get("total_steps", 0),
        "loss": status.get("loss"),
        "created": created,
        "has_adapter": (run_dir / ADAPTER / "adapter_config.json").exists(),
        "status": status,
    }


def list_runs(runs_dir: str | Path) -> list[dict]:
    """Every run folder under ``runs_dir``, newest first, built from the folders alone."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [run_summary(p) for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    runs.sort(key=lambda r: r["created"], reverse=True)
    return runs


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer_state.json was written)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    best = None
    for p in root.glob("checkpoint-*"):
        try:
            step = int(p.name.split("-", 1)[1])
        except ValueError:
            continue
        if (p / "trainer_state.json").is_file() and (best is None or step > best[0]):
            best = (step, p)
    return best[1] if best else None


# ---------------------------------------------------------------------------------- model paths
@dataclass
class RunModel:
    """What the chat / eval code needs to load a run's model."""

    base: str  # local folder of the base model
    adapter: str | None  # PEFT adapter folder (final adapter, else the latest checkpoint), or None
    method: str  # lora | qlora
    name_or_path: str  # as written in the config
    load_in_4bit: bool  # how the base was trained


def run_model_paths(run_dir: str | Path) -> RunModel:
    """Base model folder and adapter folder of a run (the adapter of the newest checkpoint while the
    run is still going)."""
    from core.config import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / CONFIG)
    status = _read_json(run_dir / STATUS) or {}
    base = status.get("model_path") or ""
    if not base or not Path(base).is_dir():
        from core.train.backends import resolve_model_path

        base = str(resolve_model_path(cfg.model))
    adapter = None
    if (run_dir / ADAPTER / "adapter_config.json").is_file():
        adapter = str(run_dir / ADAPTER)
    else:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None and (ckpt / "adapter_config.json").is_file():
            adapter = str(ckpt)
    method = status.get("method") or cfg.model.method
    return RunModel(base=base, adapter=adapter, method=method, name_or_path=cfg.model.name_or_path,
                    load_in_4bit=method == "qlora")


# ------------------------------------------------------------------------------ starting / stopping
def new_run_name(model_name: str, method: str) -> str:
    base = Path(model_name.rstrip("/")).name or "model"
    base = "".join(c if c.isalnum() or c in "-._" else "-" for c in base).strip("-.") or "model"
    return f"{base}-{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _worker_cmd(config_path: Path, name: str, runs_dir: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "core", "train", str(config_path), "--name", name,
           "--runs-dir", str(runs_dir)]
    if resume:
        cmd.append("--resume")
    return cmd


def _spawn(cmd: list[str], run_dir: Path) -> subprocess.Popen:
    import threading

    env = dict(os.environ)
    env["QWENTUNE_LOG_REDIRECTED"] = "1"  # stdout already goes to train.log: no tee needed
    env["PYTHONUNBUFFERED"] = "1"
    pythonpath = env.get("PYTHONPATH", "")
    if str(ROOT) not in pythonpath.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pythonpath) if p)
    log = (run_dir / LOG).open("ab")
    try:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    finally:
        log.close()
    # Reap the child when it exits so it never lingers as a zombie that looks alive.
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
    return proc


def start_run(config, runs_dir: str | Path | None = None, name: str | None = None) -> Path:
    """Create ``runs_dir/<name>/`` with the resolved config and start the worker detached.

    ``config`` is a RunConfig or a path to a YAML file. Returns the run folder; the worker writes
    status.json from then on. Raises ConfigError for a bad config, RunError if the folder exists.
    """
    from core.config import RunConfig, load_run_config
    from core.settings import dump_yaml

    if isinstance(config, (str, os.PathLike)):
        cfg = load_run_config(config)
    elif isinstance(config, RunConfig):
        import copy

        cfg = copy.deepcopy(config)
    else:
        raise TypeError(f"config must be a RunConfig or a YAML path, not {type(config).__name__}")
    runs_root = Path(runs_dir if runs_dir is not None else cfg.runs_dir).resolve()
    cfg.runs_dir = str(runs_root)
    cfg.name = name or cfg.name or new_run_name(cfg.model.name_or_path, cfg.model.method)
    check_run_name(cfg.name)
    run_dir = runs_root / cfg.name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"run folder {run_dir} already exists; choose another name or resume it")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_dir / CONFIG, header="QwenTune run config (resolved). Resume with:\n"
                                            f"  python -m core train {run_dir / CONFIG} --resume")
    write_json_atomic(run_dir / STATUS, {
        "state": "queued", "pid": None, "created": now_iso(), "queued": now_iso(), "updated": now_iso(), "step": 0,
        "total_steps": 0, "model": cfg.model.name_or_path, "method": cfg.model.method,
    })
    _spawn(_worker_cmd(run_dir / CONFIG, cfg.name, runs_root, resume=False), run_dir)
    return run_dir


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
        try:
            # The worker leads its own process group when the GUI started it: take its children too.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.time() + timeout
        while pid_alive(pid) and time.time() < deadline:
            time.sleep(0.05)
    ckpt = latest_checkpoint(run_dir)
    (run_dir / STOP_FLAG).unlink(missing_ok=True)
    return write_status(
        run_dir, state="stopped", killed=True, resumable=True, finished=now_iso(),
        error=None, advice=("Stopped at once; resume continues from " + ckpt.name) if ckpt else
        "Stopped at once before the first checkpoint; resume starts again from step 0.",
    )


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
    (run_dir / STOP_FLAG).unlink(missing_ok=True)
    write_status(run_dir, state="queued", pid=None, queued=now_iso(), error=None, advice=None,
                 killed=False, lost=False)
    _spawn(_worker_cmd(run_dir / CONFIG, run_dir.name, run_dir.parent, resume=True), run_dir)
    return run_dir


def delete_run(run_dir: str | Path) -> None:
    import shutil

    run_dir = Path(run_dir)
    if read_status(run_dir)["state"] in ACTIVE:
        raise RunError(f"run {run_dir.name} is still running; stop it first")
    if not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a run folder")
    shutil.rmtree(run_dir)
