"""The training process: `python -m core train CONFIG.yaml` ends up here, in its own process.

    config -> run folder -> GPU lock -> backend (Unsloth first) -> model -> mix -> tokens + mask
           -> TRL SFTTrainer (+ progress callback) -> adapter -> status done | stopped | failed

Every way out writes status.json: ``done``; ``stopped`` (the stop file, SIGTERM or Ctrl-C: the
adapter and a checkpoint are saved); ``failed`` with the error and plain advice (out of memory gets
the estimator's figure for a setting that fits). A kill -9 leaves ``running`` behind with a dead pid,
which core.train.runs.read_status reports as failed and resumable.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from core.errors import QwenTuneError, outcome
from core.settings import ConfigError, DamagedFile, dump_yaml
from core.train import runs
from core.train.exits import (  # noqa: F401  (the worker's exit codes, also read as worker.EXIT_*)
    EXIT_BY_KIND,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_OOM,
    EXIT_STOPPED,
    log,
)
from core.train.notices import Notice, codes_of


# ------------------------------------------------------------------------------- train.log tee
class _Tee:
    """Copy this process's stdout/stderr (file descriptors 1 and 2, so C libraries' output too)
    into train.log while still showing it on the console."""

    def __init__(self, path: Path):
        self.log = path.open("ab", buffering=0)
        self.console = os.dup(1)
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        self.thread = threading.Thread(target=self._pump, args=(r,), daemon=True, name="train-log-tee")
        self.thread.start()

    def _pump(self, fd: int) -> None:
        log_ok = True
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            if log_ok:
                try:
                    self.log.write(data)
                except OSError:  # disk full: keep draining the pipe (a full pipe would stall training)
                    log_ok = False
            try:
                os.write(self.console, data)
            except OSError:
                pass

    def close(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.console, 1)  # closes the pipe's write end held by fd 1
        os.dup2(self.console, 2)
        self.thread.join(timeout=5)
        self.log.close()


# ---------------------------------------------------------------------------------- run folder
def prepare_run_dir(cfg, resume: bool) -> Path:
    """The run folder of ``cfg`` (runs_dir/name), taken for this process. A new run claims the name
    atomically (:func:`core.train.runs.claim_run_dir`) unless start_run claimed it for us: a folder
    whose status is ``queued`` without a pid is a run start_run made and is waiting for its worker."""
    runs.check_run_name(cfg.name)
    run_dir = Path(cfg.runs_dir).expanduser() / cfg.name
    folder = runs.RunFolder(run_dir)
    if resume:
        if not folder.config.is_file():
            raise ConfigError(f"nothing to resume: {run_dir} is not a run folder", "name")
        status = folder.status()
        if status.unreadable:
            raise runs.RunError(f"run {cfg.name} cannot be resumed: {status.error}", where=str(run_dir))
        if status.state in runs.ACTIVE and status.pid not in (None, os.getpid()):
            raise ConfigError(f"run {cfg.name} is still {status.state} (pid {status.pid})", "name")
        if status.state == "done":
            raise ConfigError(f"run {cfg.name} already finished; start a new run to train longer", "name")
        dump_yaml(cfg, folder.config, header=runs.config_header(run_dir))
        return run_dir
    try:
        waiting = folder.read_status_raw()
    except DamagedFile:
        waiting = None
    if not (waiting is not None and waiting.state == "queued" and not waiting.pid
            and folder.claim_path.is_file()):
        try:
            runs.claim_run_dir(run_dir)
        except runs.RunError as exc:
            raise ConfigError(f"{exc.message}; choose another --name, or add --resume to continue it",
                              "name") from None
    dump_yaml(cfg, folder.config, header=runs.config_header(run_dir))
    return run_dir


class GpuLock:
    """One training at a time per runs folder: a second run waits as ``queued``. The lock is an
    flock, so the kernel releases it when the holder dies, even by kill -9."""

    def __init__(self, runs_dir: Path):
        self.path = runs_dir / runs.GPU_LOCK
        self.fd = None

    def acquire(self, run_dir: Path) -> bool:
        """Wait for the lock; False if a stop was requested meanwhile."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs are not serialised
            return True
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        waiting = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
                    log(f"waiting for the running training to finish ({holder or 'another run'})")
                    runs.write_status(run_dir, state="queued", phase=f"waiting for {holder or 'another run'}",
                                      waiting_for=holder or None)
                    waiting = True
                if (run_dir / runs.STOP_FLAG).exists():
                    return False
                time.sleep(1.0)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{run_dir.name} (pid {os.getpid()})".encode(), 0)
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FailureReserve:
    """Disk space kept back so that a run can still say how it failed when the disk fills up.

    Two files in the run folder, allocated when the worker starts: ``.reserve`` (ballast, deleted
    first on a failure, which frees room for the log's last lines and the status) and
    ``.status.reserve`` (blocks already allocated: the final status is written into it and renamed
    over status.json, which needs no new blocks, when even a normal write fails)."""

    BALLAST = ".reserve"
    STATUS = ".status.reserve"
    BALLAST_BYTES = 1 << 20
    STATUS_BYTES = 64 << 10

    def __init__(self, run_dir: Path):
        self.ballast = run_dir / self.BALLAST
        self.status_file = run_dir / self.STATUS
        self.status_path = run_dir / runs.STATUS
        for path, size in ((self.status_file, self.STATUS_BYTES), (self.ballast, self.BALLAST_BYTES)):
            try:
                _allocate(path, size)
            except OSError as exc:  # already (nearly) full: run without a reserve, and say so
                path.unlink(missing_ok=True)
                log(f"note: could not reserve {size // 1024} kB in {run_dir} for the failure report ({exc})")

    def release_ballast(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def write_status(self, status: dict) -> None:
        """Write ``status`` (a full status.json) through the pre-allocated file."""
        import json

        data = (json.dumps(status, indent=2, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.status_file, os.O_WRONLY)
        try:
            os.pwrite(fd, data[: self.STATUS_BYTES], 0)
            os.ftruncate(fd, min(len(data), self.STATUS_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.status_file, self.status_path)

    def close(self) -> None:
        self.ballast.unlink(missing_ok=True)
        self.status_file.unlink(missing_ok=True)


def _allocate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.write(fd, b"\0" * size)
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException, run_dir: Path, needed: int) -> bool:
    """The failure is the disk running out of space: ENOSPC anywhere in the exception's chain, or a
    write error that hides its errno (torch.save's "file write failed") with less free than needed."""
    import errno

    seen, chain = set(), []
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
    if any("file write failed" in str(e) or "PytorchStreamWriter failed" in str(e) for e in chain):
        return free_bytes(run_dir) < needed
    return False


def _mb(n: int) -> str:
    mb = n / (1 << 20)
    return f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"


def free_bytes(path: Path) -> int:
    import shutil

    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def checkpoint_bytes(run_dir: Path) -> int:
    """About what one more checkpoint needs: the size of the newest one, else an estimate from the
    trainable parameters (fp32 weights + two AdamW moments) and the tokenizer files saved with it."""
    from core.models.local import dir_size

    folder = runs.RunFolder(run_dir)
    ckpt = folder.latest_checkpoint()
    if ckpt is not None:
        return dir_size(ckpt.path)
    try:
        status = folder.read_status_raw() or runs.Status()
    except DamagedFile:
        status = runs.Status()
    size = (status.trainable_params or 0) * 12
    if status.model_path:
        for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
            p = Path(status.model_path) / name
            size += p.stat().st_size if p.is_file() else 0
    return size


# --------------------------------------------------------------------------------------- advice
def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text and ("cuda" in text or "alloc" in text)


def oom_advice(cfg, model_path: Path | None, backend: str) -> str:
    """Plain advice after an out-of-memory error, with the estimator's figure for the suggestion."""
    t, m = cfg.train, cfg.model
    changes: list[tuple[str, object]] = []
    if t.micro_batch > 1:
        changes.append(("train.micro_batch", max(1, t.micro_batch // 2)))
        changes.append(("train.grad_accum", t.grad_accum * 2))
    elif t.max_seq_len > 512:
        changes.append(("train.max_seq_len", t.max_seq_len // 2))
    if m.method == "lora":
        changes.append(("model.method", "qlora"))
    if t.gradient_checkpointing == "off":
        changes.append(("train.gradient_checkpointing", "unsloth" if backend == "unsloth" else "on"))
    if not changes:
        return ("The GPU ran out of memory even at micro-batch 1 with QLoRA. Choose a smaller model, a "
                "shorter train.max_seq_len, or a lower lora.r.")
    text = "The GPU ran out of memory. Try " + ", ".join(f"{k} = {v}" for k, v in changes)
    if ("train.grad_accum", t.grad_accum * 2) in changes:
        text += " (same effective batch)"
    text += ". Lower micro-batch or sequence length first; QLoRA needs about 3x less memory for the weights."
    fig = _estimate_figure(cfg, model_path, backend, dict(changes))
    return text + (" " + fig if fig else "")


def _estimate_figure(cfg, model_path, backend, changes: dict) -> str:
    """The estimator's per-card peak for the run as it was and with ``changes`` (dotted setting ->
    value), stage, rl settings and cards included (core.hardware.estimate.estimate_run)."""
    import copy
    import json

    from core.hardware.catalog import Arch
    from core.hardware.estimate import estimate_run

    if model_path is None:
        return ""
    try:
        arch = Arch.from_hf_config(json.loads((Path(model_path) / "config.json").read_text()))
        changed = copy.deepcopy(cfg)
        for path, value in changes.items():
            section, name = path.split(".")
            setattr(getattr(changed, section), name, value)
        before = estimate_run(cfg, model=arch, backend=backend)
        after = estimate_run(changed, model=arch, backend=backend)
        per_card = " per GPU" if cfg.train.strategy != "single" else ""
        return (f"Estimated peak{per_card}: {before.total_gib:.1f} GiB now, about {after.total_gib:.1f} GiB with "
                "these changes.")
    except Exception as exc:  # an estimate is a courtesy; the advice above stands without it
        return f"(No memory estimate: {exc}.)"


# ---------------------------------------------------------------------------------------- train
def _report_to(name: str, run_dir: Path) -> list[str]:
    if name == "none":
        return []
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}[name]
    if importlib.util.find_spec(package) is None and not (name == "tensorboard"
                                                         and importlib.util.find_spec("tensorboardX")):
        raise ConfigError(f"report_to {name} needs the Python package '{package}': pip install {package}",
                          "train.report_to")
    if name == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    if name == "wandb":
        os.environ.setdefault("WANDB_DIR", str(run_dir))
    return [name]


def resolve_optimizer(requested: str, cuda: bool) -> str:
    if requested == "auto":
        import importlib.util

        return "adamw_8bit" if cuda and importlib.util.find_spec("bitsandbytes") else "adamw_torch"
    if requested in ("adamw_8bit", "paged_adamw_8bit") and not cuda:
        raise ConfigError(f"{requested} needs a CUDA GPU (bitsandbytes); use adamw_torch or auto on the CPU",
                          "train.optimizer")
    return requested


def build_trainer(cfg, loaded, train_tok, eval_tok, run_dir: Path, callbacks, packing: str):
    if cfg.train.stage != "sft":  # dpo / orpo / grpo: TRL's trainer for the stage
        from core.train import stages

        return stages.build_trainer(cfg, loaded, train_tok, eval_tok, run_dir, callbacks,
                                    optim=resolve_optimizer(cfg.train.optimizer, loaded.device == "cuda"),
                                    report_to=_report_to(cfg.train.report_to, run_dir))
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from core.train import lean
    from core.train.trainargs import training_args

    t = cfg.train
    has_eval = eval_tok is not None and eval_tok.rows > 0
    args = SFTConfig(
        **training_args(cfg, loaded, run_dir, has_eval=has_eval,
                        optim=resolve_optimizer(t.optimizer, loaded.device == "cuda"),
                        report_to=_report_to(t.report_to, run_dir)),
        # Rows are pre-tokenized and already fit max_seq_len; padding-free TRL wants max_length None.
        max_length=None if packing == "padding_free" else t.max_seq_len,
        packing=packing == "packing",
        packing_strategy="bfd",
        padding_free=packing in ("padding_free", "packing"),
        assistant_only_loss=False,  # the mask comes in the assistant_masks column (core.data.render)
        completion_only_loss=False,
        dataset_num_proc=None,
    )
    train_ds = Dataset.from_dict(train_tok.columns())
    eval_ds = Dataset.from_dict(eval_tok.columns()) if has_eval else None
    trainer_class = lean.for_backend(SFTTrainer, loaded.backend, sft=True)
    trainer = trainer_class(model=loaded.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=loaded.tokenizer, callbacks=callbacks)
    if packing == "bucket":
        from core.train import batching

        batching.install(trainer, t.micro_batch, t.max_seq_len, t.seed)
    return trainer


def trainable_summary(model) -> dict:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_storage", None) is not None or p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit weights per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable_params": trainable, "total_params": total}


def run(cfg, *, resume: bool = False) -> int:
    """Train ``cfg`` (a resolved RunConfig) in this process (strategy single), or start its ranks
    and watch them (ddp / fsdp: this process is the launcher parent, see core.train.supervise).
    A rank itself starts in core.train.ranks.run_rank (the train command sends it there). Returns
    the exit code."""
    from core.train.launch import rank_info

    if rank_info() is not None:  # a rank enters through core.train.ranks.run_rank (the train command)
        raise RuntimeError("worker.run called in a rank of a ddp / fsdp run; ranks start with ranks.run_rank")
    if (os.environ.get("WORLD_SIZE") or "1") != "1":
        raise ConfigError("this process is one of several started by torchrun / accelerate launch; QwenTune starts "
                          "its own ranks: run `python -m core train` once with train.strategy ddp or fsdp",
                          "train.strategy")
    run_dir = prepare_run_dir(cfg, resume)
    tee = None
    if os.environ.get("QWENTUNE_LOG_REDIRECTED") != "1":
        tee = _Tee(run_dir / runs.LOG)
    reserve = FailureReserve(run_dir)
    try:
        return _run(cfg, run_dir, resume, reserve)
    finally:
        reserve.close()
        runs.RunFolder(run_dir).claim_path.unlink(missing_ok=True)  # the run is written: the name is taken
        if tee is not None:
            tee.close()


def _run(cfg, run_dir: Path, resume: bool, reserve: FailureReserve) -> int:
    if resume and os.environ.get("QWENTUNE_LOG_REDIRECTED") != "1":
        (run_dir / runs.STOP_FLAG).unlink(missing_ok=True)  # a stale request from the last session
    log(f"run {cfg.name} in {run_dir} (pid {os.getpid()}{', resuming' if resume else ''})")
    runs.write_status(run_dir, state="running", phase="starting", pid=os.getpid(), started=runs.now_iso(),
                      finished=None, error=None, error_kind=None, advice=None, killed=False, lost=False,
                      oom=None, disk_full=None, resumable=False, agent_pid=None, rank_pids=None,
                      model=cfg.model.name_or_path, method=cfg.model.method, run=cfg.name, waiting_for=None,
                      **({} if resume else {"step": 0, "total_steps": 0,
                                            "created": runs.read_status(run_dir).get("created") or runs.now_iso()}))
    stop_signals = {"count": 0}

    def on_signal(signum, _frame):
        stop_signals["count"] += 1
        if stop_signals["count"] > 1:
            raise KeyboardInterrupt
        (run_dir / runs.STOP_FLAG).write_text(f"signal {signum}\n")
        log(f"signal {signum}: stopping after this step (again to abort)")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (tests may call run() from one): no handlers
            break

    lock = GpuLock(Path(cfg.runs_dir).expanduser())
    where = Where()
    try:
        if not lock.acquire(run_dir):
            runs.write_status(run_dir, state="stopped", phase="", finished=runs.now_iso(), resumable=True,
                              advice="Stopped while waiting for another run.")
            return EXIT_STOPPED
        from core.train import launch

        plan = launch.plan(cfg)
        runs.write_status(run_dir, strategy=plan.strategy, world_size=plan.world_size, gpus=list(plan.gpus))
        if plan.multi:
            runs.write_status(run_dir, state="running", phase="starting processes")
            where.model_path = _resolve_model(cfg)
            _load_data(cfg, run_dir, where.model_path, resume)  # an inline mix is built once, here
            from core.train import supervise

            return supervise.run_ranks(cfg, run_dir, resume, plan, where.model_path)
        launch.select_gpus(plan, cfg.train.gpus)
        return load_and_train(cfg, run_dir, resume, where)
    except KeyboardInterrupt:
        log("aborted")
        runs.write_status(run_dir, state="stopped", phase="", finished=runs.now_iso(), resumable=True,
                          advice="Aborted; resume continues from the newest checkpoint.")
        return 130
    except BaseException as exc:
        return _record_failure(cfg, run_dir, exc, where.model_path, where.backend, reserve)
    finally:
        (run_dir / runs.STOP_FLAG).unlink(missing_ok=True)
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Where:
    """How far a start got, for the failure report (the model folder and backend, once known)."""

    model_path: Path | None = None
    backend: str = "?"


def load_and_train(cfg, run_dir: Path, resume: bool, where: Where, group=None) -> int:
    """Load the backend, the model and the data, then train. ``group``: this process is one rank of
    a ddp / fsdp run (a :class:`core.train.ranks.Group`); rank 0 writes the run folder."""
    main = group is None or group.main
    runs.write_status(run_dir, state="running", phase="loading model")
    requested = cfg.model.backend
    if group is not None and group.strategy == "fsdp" and requested == "auto":
        requested = "peft"  # fsdp shards on transformers + PEFT (Unsloth keeps a whole copy per GPU)
    backend, notices = _activate_backend(requested)
    where.backend = backend
    model_path = where.model_path = _resolve_model(cfg)
    runs.write_status(run_dir, backend=backend, model_path=str(model_path))
    # Ranks read the mix the launcher built (an inline mix is never rebuilt under a running rank).
    train_convs, eval_convs, manifest, mix_dir = _load_data(cfg, run_dir, model_path, resume or group is not None,
                                                            keep_manifest=group is None)
    from core.train import autobatch, backends

    world = group.world_size if group is not None else 1
    autobatch.resolve(cfg, run_dir, model_path, backend, echo=log, world_size=world)  # auto -> a number
    if group is not None:
        group.agree_on_batch(cfg, run_dir)
    log(f"loading {model_path} with {backend} ({cfg.model.method})")
    t_load = time.perf_counter()
    loaded = backends.load(cfg, model_path, backend, **(group.load_kwargs(cfg) if group is not None else {}))
    notices += loaded.notices
    for n in notices:
        log("note: " + n)
    params = trainable_summary(loaded.model)
    log(f"model loaded in {time.perf_counter() - t_load:.1f}s: {params['trainable_params']:,} trainable of "
        f"{params['total_params']:,} parameters")
    from core.train.data import mix_tokenizer_notice, tokenize_run

    train_tok = tokenize_run(cfg, train_convs, loaded.tokenizer)
    eval_tok = tokenize_run(cfg, eval_convs, loaded.tokenizer) if eval_convs else None
    mix_note = mix_tokenizer_notice(manifest, loaded.tokenizer, train_tok, cfg.train.max_seq_len)
    if mix_note:
        log("note: " + mix_note)
        notices.append(mix_note)
    _check_rows(cfg, train_tok, "train")
    log(f"data: {train_tok.summary()}" + (f"; eval: {eval_tok.summary()}" if eval_tok else ""))
    runs.write_status(run_dir, backend=backend, method=loaded.method, dtype=loaded.dtype,
                      device=loaded.device, notices=notices, notice_codes=codes_of(notices),
                      mix_dir=str(mix_dir),
                      data=train_tok.summary(), eval_data=eval_tok.summary() if eval_tok else None,
                      **params)
    stop = (run_dir / runs.STOP_FLAG).exists() if main else False
    if group is not None:
        stop = group.decide(stop)  # every rank stops here, or none does
    if stop:
        if main:
            (run_dir / runs.STOP_FLAG).unlink(missing_ok=True)
        runs.write_status(run_dir, state="stopped", phase="", finished=runs.now_iso(), resumable=True,
                          advice="Stopped before the first step.")
        return EXIT_STOPPED
    return _train(cfg, run_dir, loaded, train_tok, eval_tok, resume, group)




def _record_failure(cfg, run_dir: Path, exc: BaseException, model_path, backend: str,
                    reserve: FailureReserve | None = None) -> int:
    """Write how the run failed (kind, error, advice, resumable) and return the exit code."""
    needed = checkpoint_bytes(run_dir)
    if is_disk_full(exc, run_dir, needed):
        return _record_disk_full(run_dir, exc, needed, reserve)
    if is_oom(exc):
        traceback.print_exc()
        advice = oom_advice(cfg, model_path, backend)
        log("out of memory: " + advice)
        runs.write_status(run_dir, state="failed", phase="", finished=runs.now_iso(), oom=True,
                          error_kind="resource", error=f"Out of GPU memory: {str(exc).splitlines()[0][:300]}",
                          advice=advice, resumable=True, **_peaks())
        return EXIT_OOM
    if not isinstance(exc, QwenTuneError):
        traceback.print_exc()
    result = outcome(exc)
    log(f"error: {result.error}" + (f"\n{result.advice}" if result.advice else ""))
    runs.write_status(run_dir, state="failed", phase="", finished=runs.now_iso(), error=result.error,
                      error_kind=result.kind, advice=result.advice, resumable=result.resumable)
    return EXIT_BY_KIND.get(result.kind, EXIT_FAILED) if isinstance(exc, QwenTuneError) else EXIT_FAILED


def _record_disk_full(run_dir: Path, exc: BaseException, needed: int, reserve: FailureReserve | None) -> int:
    """The disk is full: free the ballast, drop checkpoints that were cut off (they cannot be
    resumed from), then write the log's last lines and a ``failed`` status, whatever space is left."""
    import shutil

    free = free_bytes(run_dir)
    if reserve is not None:
        reserve.release_ballast()
    folder = runs.RunFolder(run_dir)
    for ckpt in folder.checkpoints():
        if not ckpt.complete:
            shutil.rmtree(ckpt.path, ignore_errors=True)
    error = f"disk full: {_mb(free)} MB free in {run_dir}, a checkpoint needs about {_mb(needed)} MB"
    newest = folder.latest_checkpoint()
    advice = ("Free space on that disk (or choose a runs folder on a larger one) and resume; "
              + (f"it continues from {newest.name}." if newest else "no checkpoint was saved yet, so it starts "
                 "again from step 0."))
    try:
        traceback.print_exc()
        log(f"error: {error} ({type(exc).__name__}: {str(exc)[:300]})\n{advice}")
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass  # the log cannot grow; status.json below still says what happened
    updates = dict(state="failed", phase="", finished=runs.now_iso(), error=error, error_kind="resource",
                   advice=advice, resumable=True, disk_full=True)
    try:
        runs.write_status(run_dir, **updates)
    except OSError:
        if reserve is None:
            raise
        try:
            status = folder.read_status_raw() or runs.Status()
        except DamagedFile:
            status = runs.Status()
        status.update(**updates, updated=runs.now_iso())
        reserve.write_status(status.to_dict())
    return EXIT_FAILED


def _peaks() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    return {}


def _activate_backend(requested: str) -> tuple[str, list[str]]:
    from core.train import backends

    backend, notices = backends.choose_backend(requested)
    try:
        notices += backends.activate(backend)
    except Exception as exc:
        if requested == "unsloth":
            raise ConfigError(f"unsloth failed to import: {type(exc).__name__}: {exc}", "model.backend") from exc
        traceback.print_exc()
        notices.append(Notice("unsloth_failed", error=f"{type(exc).__name__}: {exc}"))
        backend = "peft"
    return backend, notices


def _resolve_model(cfg) -> Path:
    from core.train.backends import resolve_model_path

    return resolve_model_path(cfg.model)


def _load_data(cfg, run_dir: Path, model_path: Path, resume: bool, keep_manifest: bool = True):
    import json

    from core.train.data import load_mix

    train, evals, manifest, mix_dir = load_mix(cfg, run_dir, model_path, resume, echo=log)
    if cfg.data.mix_dir and keep_manifest:  # keep what this run trained on, even if the mix folder changes later
        (run_dir / "mix_manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    return train, evals, manifest, mix_dir


def _check_rows(cfg, tok, split: str) -> None:
    if tok.rows:
        if tok.too_long:
            log(f"note: {tok.too_long} {split} rows are longer than train.max_seq_len={cfg.train.max_seq_len} "
                "tokens and were left out (rows are never cut: a cut reasoning trace teaches stopping mid-thought)")
        return
    where = "data.mix_dir" if cfg.data.mix_dir else "data.mix"
    raise ConfigError(f"no {split} row can be trained: {tok.too_long} of {tok.rows_in} rows are longer than "
                      f"train.max_seq_len={cfg.train.max_seq_len} and {tok.no_target} have no trained tokens",
                      where)


@dataclass
class Prepared:
    """A trainer wired exactly as a run uses it (also what bench/step_profile.py measures)."""

    trainer: object
    progress: object
    counter: object
    gpu: object
    packing: str
    pacing: object  # core.train.heap.CollectorPacing: its thresholds restored on failure


def prepare_trainer(cfg, run_dir: Path, loaded, train_tok, eval_tok, echo=log, group=None) -> Prepared:
    from core.train.backends import settle_precision, trainer_precision
    from core.train.callbacks import GpuSampler, ProgressCallback, TokenCounter
    from core.train.data import choose_packing
    from core.train.heap import CollectorPacing

    counter = TokenCounter(echo=echo)
    gpu = GpuSampler()
    progress = ProgressCallback(run_dir, counter, gpu, echo=echo, group=group)
    packing, why = choose_packing(cfg.train.packing, [len(x) for x in train_tok.input_ids], cfg.train.micro_batch,
                                  cfg.train.max_seq_len)
    if cfg.train.stage != "sft":  # TRL's dpo / orpo / grpo trainers batch their own (padded) rows
        from core.train.stages import batching_notice

        packing, why = "off", batching_notice(cfg.train.stage)
    echo("batching: " + why)
    runs.write_status(run_dir, packing=packing, packing_reason=why, packing_code=codes_of([why])[0],
                      stage=cfg.train.stage)
    if packing in ("packing", "padding_free") and loaded.backend == "unsloth":
        from core.train.backends import varlen_attention_available

        if not varlen_attention_available():
            import torch

            note = Notice("packing_no_varlen", torch=torch.__version__.split("+")[0])
            echo("note: " + note)
            status = runs.read_status(run_dir)
            runs.write_status(run_dir, notices=list(status.notices or []) + [note],
                              notice_codes=list(status.notice_codes or []) + codes_of([note]))
    pacing = CollectorPacing()
    with trainer_precision(cfg, loaded) as (autocast, why):
        # the pacing first: its freeze at train begin lands before the progress clock starts
        trainer = build_trainer(cfg, loaded, train_tok, eval_tok, run_dir, [pacing, progress], packing)
    settle_precision(trainer, autocast)
    echo(why)
    runs.write_status(run_dir, autocast=autocast)
    if group is not None:
        group.install(trainer)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints one readable line per step
    if cfg.train.stage != "sft":
        from core.train.stages import count_tokens

        wrapped = count_tokens(trainer, counter)
    else:
        wrapped = counter.wrap(trainer.data_collator)
    if not wrapped:
        echo("note: the data collator cannot be wrapped; tokens/s will not be shown")
    original_evaluate = trainer.evaluate

    def evaluate(*args, **kwargs):  # eval batches are not training tokens
        counter.paused = True
        try:
            return original_evaluate(*args, **kwargs)
        finally:
            counter.paused = False

    trainer.evaluate = evaluate
    return Prepared(trainer, progress, counter, gpu, packing, pacing)


def _train(cfg, run_dir: Path, loaded, train_tok, eval_tok, resume: bool, group=None) -> int:
    from core.train.backends import save_adapter

    main = group is None or group.main
    folder = runs.RunFolder(run_dir)
    prepared = prepare_trainer(cfg, run_dir, loaded, train_tok, eval_tok, group=group)
    trainer, progress, gpu = prepared.trainer, prepared.progress, prepared.gpu
    ckpt = folder.latest_checkpoint() if resume else None
    if group is not None:
        ckpt = group.same_checkpoint(ckpt, folder)
    if resume:
        log(f"resuming from {ckpt.path}" if ckpt else "no checkpoint to resume from: starting at step 0")
    if ckpt is not None and main:
        trim_metrics(folder, ckpt.step)  # the steps after the checkpoint are trained (and logged) again
    finished = ckpt is not None and checkpoint_is_last(ckpt.path)
    runs.write_status(run_dir, state="running", phase="finishing" if finished else "training",
                      resumed_from=ckpt.name if ckpt else None)
    result, train_s = None, 0.0
    if finished:
        # Every step was trained before the process ended (killed after its last checkpoint, or a
        # failure in the final evaluation): take the weights and finish, never train past the end.
        log(f"{ckpt.name} is the last step of this run: finishing (evaluation, adapter) without training")
        _restore_finished(trainer, progress, ckpt.path)
    else:
        t0 = time.perf_counter()
        try:
            result = trainer.train(resume_from_checkpoint=str(ckpt.path) if ckpt else None)
        finally:  # the log writer's queue lands before any status below (or the failure's)
            progress.flush()
            prepared.pacing.release()
        train_s = time.perf_counter() - t0
    stopped = progress.stop_requested
    final_eval = None
    has_eval = eval_tok is not None and eval_tok.rows > 0
    if has_eval and not stopped and progress.last_eval_step != trainer.state.global_step:
        runs.write_status(run_dir, phase="evaluating")
        final_eval = trainer.evaluate().get("eval_loss")
    runs.write_status(run_dir, phase="saving adapter")
    if group is not None:
        adapter = group.save_adapter(trainer, loaded.tokenizer, run_dir / runs.ADAPTER)
    else:
        adapter = save_adapter(trainer.model, loaded.tokenizer, run_dir / runs.ADAPTER)
    log(f"adapter saved to {adapter}")
    state = "stopped" if stopped else "done"
    tokens = progress.tokens_total()
    end = {"state": state, "phase": "", "finished": runs.now_iso(), "step": trainer.state.global_step,
           "total_steps": trainer.state.max_steps or None,
           "eval_loss": final_eval if final_eval is not None else progress.last_eval_loss,
           "adapter": str(adapter), "resumable": stopped, **gpu.peaks(),
           "advice": "Stopped on request; the adapter so far is saved and resume continues from here."
           if stopped else None}
    if result is not None:
        end.update(loss=progress.last_loss, train_loss_avg=result.training_loss, train_runtime_s=round(train_s, 2),
                   tokens=tokens, tokens_per_s=round(tokens / train_s, 1) if train_s > 0 else None)
    elif progress.last_loss is not None:
        end["loss"] = progress.last_loss
    status = runs.write_status(run_dir, **{k: v for k, v in end.items() if v is not None or k == "advice"})
    log(f"{state}: step {status['step']}/{status.get('total_steps')}, loss {status.get('loss')}")
    return EXIT_STOPPED if stopped else EXIT_OK


def checkpoint_is_last(ckpt: Path) -> bool:
    """The checkpoint was saved at the run's last step (trainer_state.json: global_step >= max_steps)."""
    from core.settings import read_json

    try:
        state = read_json(ckpt / "trainer_state.json", expect=dict) or {}
    except DamagedFile:
        return False
    step, total = state.get("global_step"), state.get("max_steps")
    return isinstance(step, int) and isinstance(total, int) and 0 < total <= step


def _restore_finished(trainer, progress, ckpt: Path) -> None:
    """Put a finished checkpoint's adapter weights and trainer state into ``trainer`` (no training)."""
    from peft import set_peft_model_state_dict
    from transformers import TrainerState

    weights = ckpt / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        state_dict = load_file(str(weights))
    else:
        import torch

        state_dict = torch.load(ckpt / "adapter_model.bin", map_location="cpu", weights_only=True)
    set_peft_model_state_dict(trainer.model, state_dict)
    trainer.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    progress.total_steps = trainer.state.max_steps
    for entry in trainer.state.log_history:
        if entry.get("loss") is not None:
            progress.last_loss = entry["loss"]
        if entry.get("eval_loss") is not None:
            progress.last_eval_loss, progress.last_eval_step = entry["eval_loss"], entry.get("step")


def trim_metrics(folder, last_step: int) -> None:
    """Keep the metrics lines up to ``last_step`` (the checkpoint a resume starts from): the resumed
    run logs the later steps again, and metrics.jsonl keeps one line per step."""
    import json

    rows = folder.read_metrics()
    kept = [r for r in rows if not isinstance(r.get("step"), int) or r["step"] <= last_step]
    if len(kept) == len(rows) and folder.metrics.is_file():
        try:  # nothing to drop unless the file holds damaged lines read_metrics skipped
            if sum(1 for line in folder.metrics.open("rb") if line.strip()) == len(rows):
                return
        except OSError:
            return
    from core.settings import write_atomic

    write_atomic(folder.metrics, "".join(json.dumps(r) + "\n" for r in kept))
