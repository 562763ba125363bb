"""One rank of a ddp / fsdp run: the process torchrun started for one GPU (core.train.launch).

Every rank loads the model, trains its share of each batch and takes part in every collective;
only rank 0 writes the run folder (status.json, metrics.jsonl, the adapter: the log reaches
train.log through the launcher parent). The decisions all ranks must make alike go through
:class:`Group` over a small CPU (gloo) process group of their own, so they never wait on the GPU:

- stop: rank 0 reads the stop file after each step and broadcasts the answer; every rank stops on
  the same step and the Trainer saves one checkpoint there;
- the micro-batch (``auto`` is chosen per card; the smallest choice wins, so all ranks agree);
- the checkpoint a resume starts from.

A rank whose launcher parent is gone ends itself (a watchdog thread), so no rank trains on for a
run that nobody owns any more; torchrun then ends the others.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from contextlib import suppress
from pathlib import Path

from core.train import runs
from core.train.launch import PEER_LOST, RankInfo

WATCH_INTERVAL_S = 1.0


class Group:
    """The ranks of this run, as this process sees them."""

    def __init__(self, info: RankInfo, strategy: str, cpu: bool):
        import torch.distributed as dist

        self.info = info
        self.strategy = strategy
        self.cpu = cpu
        self.dist = dist
        # The CPU group for control decisions: on GPUs the default group is NCCL, whose collectives
        # would queue behind the training kernels; on the CPU the default group already is gloo.
        self.control = None if cpu else dist.new_group(backend="gloo")

    @property
    def main(self) -> bool:
        return self.info.main

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    # -- collectives (every rank calls each one, in the same order)
    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank."""
        import torch

        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        self.dist.broadcast(t, src=0, group=self.control)
        return bool(t.item())

    def total(self, n: int) -> int:
        """The sum of ``n`` over the ranks."""
        import torch

        t = torch.tensor([int(n)], dtype=torch.int64)
        self.dist.all_reduce(t, group=self.control)
        return int(t.item())

    def gather(self, obj) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj, group=self.control)
        return out

    def share(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def barrier(self) -> None:
        self.dist.barrier(group=self.control)

    # -- what the worker asks
    def agree_on_batch(self, cfg, run_dir: Path) -> None:
        """All ranks train the same micro-batch and accumulation: the smallest chosen (the card with
        the least memory decides), recorded by rank 0."""
        t = cfg.train
        choices = self.gather((int(t.micro_batch), int(t.grad_accum)))
        micro, accum = min(choices)
        if (micro, accum) != (t.micro_batch, t.grad_accum):
            from core.train.worker import log

            log(f"micro-batch {micro} x {accum} accumulation: the smallest card's choice, so every rank agrees")
            t.micro_batch, t.grad_accum = micro, accum
            runs.write_status(run_dir, micro_batch=micro, grad_accum=accum,
                              effective_batch=micro * accum * self.world_size)

    def same_checkpoint(self, ckpt, folder):
        """The checkpoint rank 0 resumes from, on every rank (a checkpoint being deleted while the
        ranks look would otherwise split them)."""
        name = self.share(ckpt.name if ckpt is not None else None)
        if name is None:
            return None
        from core.runfolder import Checkpoint

        path = folder.checkpoints_dir / name
        return Checkpoint(int(name.split("-", 1)[1]), path)

    def load_kwargs(self, cfg) -> dict:
        """How backends.load places this rank's copy of the model."""
        return {"rank_device": None if self.cpu else self.info.local_rank, "strategy": self.strategy}

    def save_adapter(self, trainer, tokenizer, out: Path) -> Path:
        """The final adapter, saved once. ddp: rank 0 saves its (identical) copy. fsdp: the LoRA
        shards are gathered (a collective: every rank calls it) and rank 0 writes the adapter."""
        from core.train.backends import save_adapter

        if self.strategy == "fsdp":
            trainer.save_model(str(out))
        elif self.main:
            save_adapter(trainer.model, tokenizer, out)
        self.barrier()
        return out

    def install(self, trainer) -> None:
        """fsdp: the Trainer's own model save gathers the whole model's state dict (every frozen base
        weight too) before PEFT keeps the adapter's few tensors; here only the trainable (LoRA)
        tensors are gathered, and rank 0 writes them as a plain PEFT adapter, in checkpoints and
        at the end alike."""
        if self.cpu:
            _cpu_checkpoint_loading(trainer)
        if self.strategy != "fsdp":
            return

        def save_model(output_dir=None, _internal_call=False):
            import torch

            out = Path(output_dir or trainer.args.output_dir)
            state = {}
            for name, param in trainer.model.named_parameters():
                if param.requires_grad:
                    full = param.full_tensor() if hasattr(param, "full_tensor") else param
                    state[name] = full.detach().to("cpu").clone()
            if self.main:
                out.mkdir(parents=True, exist_ok=True)
                model = trainer.accelerator.unwrap_model(trainer.model)
                model.save_pretrained(str(out), state_dict=state, safe_serialization=True)
                if trainer.processing_class is not None:
                    trainer.processing_class.save_pretrained(str(out))
                torch.save(trainer.args, out / "training_args.bin")

        trainer.save_model = save_model


def _fsdp_on_cpu() -> None:
    """The CPU testing path of fsdp: accelerate turns its FSDP plugin on only for accelerator
    devices and would train a CPU run as plain data parallel. FSDP2 itself shards on the CPU (gloo),
    so the plugin is kept for CPU processes too; a real run on GPUs never comes here."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def _cpu_checkpoint_loading(trainer) -> None:
    """The CPU testing path: with several processes the Trainer loads a checkpoint's optimizer onto
    its device, which accelerate names "cpu:0" on the CPU, and torch.load knows no such location.
    The load is pointed at "cpu" (the same memory); GPU runs load onto their own card as usual."""
    import torch

    original = trainer._load_optimizer_and_scheduler

    def load(checkpoint):
        real = torch.load

        def cpu_load(*args, **kwargs):
            if str(kwargs.get("map_location", "")).startswith("cpu"):
                kwargs["map_location"] = "cpu"
            return real(*args, **kwargs)

        torch.load = cpu_load
        try:
            return original(checkpoint)
        finally:
            torch.load = real

    trainer._load_optimizer_and_scheduler = load


def watch_launcher(pid: int, interval: float = WATCH_INTERVAL_S) -> threading.Thread:
    """End this process when the launcher parent ``pid`` is gone (killed with -9, say)."""
    from core.runfolder import pid_alive

    def watch():
        while True:
            time.sleep(interval)
            if not pid_alive(pid):
                print(f"rank {os.environ.get('RANK')}: the launcher (pid {pid}) is gone; ending", flush=True)
                os._exit(137)

    thread = threading.Thread(target=watch, daemon=True, name="launcher-watch")
    thread.start()
    return thread


def _quiet_rank() -> None:
    """Ranks other than 0 keep errors and tracebacks only: their notes would repeat rank 0's."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    logging.getLogger("transformers").setLevel(logging.ERROR)


def run_rank(cfg, info: RankInfo, resume: bool) -> int:
    """Train as rank ``info.rank``; returns the exit code. Rank 0 records a failure in status.json
    (the launcher parent records one that ends a rank without a word)."""
    from core.train import worker

    run_dir = Path(cfg.runs_dir).expanduser() / cfg.name
    watch_launcher(info.launcher_pid)
    if not info.main:
        _quiet_rank()
    where = worker.Where()
    group = None
    try:
        import torch.distributed as dist
        from accelerate import PartialState

        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        PartialState(cpu=cpu)  # the process group, and this rank's GPU as the current device
        if cpu and cfg.train.strategy == "fsdp":
            _fsdp_on_cpu()
        group = Group(info, cfg.train.strategy, cpu)
        pids = group.gather(os.getpid())
        if info.main:
            runs.write_status(run_dir, rank_pids=pids, world_size=info.world_size)
        code = worker.load_and_train(cfg, run_dir, resume, where, group)
        with suppress(Exception):
            dist.destroy_process_group()
        _exit(code)
    except KeyboardInterrupt:
        worker.log("aborted")
        runs.write_status(run_dir, state="stopped", phase="", finished=runs.now_iso(), resumable=True,
                          advice="Aborted; resume continues from the newest checkpoint.")
        return 130
    except BaseException as exc:
        if info.main:
            _exit(worker._record_failure(cfg, run_dir, _explained(exc, info), where.model_path, where.backend))
        traceback.print_exc()
        _report_failure(cfg, info, exc, where)
        _exit(worker.EXIT_FAILED)


def _report_failure(cfg, info: RankInfo, exc: BaseException, where) -> None:
    """A rank other than 0 that fails tells the launcher parent how, through a file in the parent's
    report folder (outside the run folder, which only rank 0 writes); the parent records it when no
    rank could (torchrun ends rank 0 before it hears of the failure)."""
    import json

    from core.errors import outcome
    from core.train import worker
    from core.train.launch import REPORTS_ENV

    folder = os.environ.get(REPORTS_ENV)
    if not folder:
        return
    exc = _explained(exc, info)
    if worker.is_oom(exc):
        report = {"kind": "resource", "error": f"Out of GPU memory: {str(exc).splitlines()[0][:300]}",
                  "advice": worker.oom_advice(cfg, where.model_path, where.backend), "resumable": True, "oom": True}
    else:
        result = outcome(exc)
        report = {"kind": result.kind, "error": result.error, "advice": result.advice,
                  "resumable": result.resumable, "oom": False}
    report.update(rank=info.rank, peer_lost=exc.__class__.__name__ == "QwenTuneError" and exc.__cause__ is not None)
    try:
        Path(folder, f"rank-{info.rank}.json").write_text(json.dumps(report), encoding="utf-8")
    except OSError as err:  # the traceback above is in train.log; the parent reports the exit code
        print(f"rank {info.rank}: could not report the failure to the launcher: {err}", flush=True)


def _exit(code: int):
    """End the rank now that everything is written. Interpreter shutdown with the process group's
    threads still around can abort in C++ ("terminate called without an active exception"), which
    torchrun would report as a failed rank after a run that succeeded."""
    import sys

    with suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _explained(exc: BaseException, info: RankInfo) -> BaseException:
    """A collective that failed because a peer is gone reads as that, not as gloo's socket error."""
    from core.errors import QwenTuneError

    text = f"{type(exc).__name__}: {exc}"
    lost = any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                   "DistBackendError", "NCCL communicator was aborted", "[gloo"))
    if not lost:
        return exc
    traceback.print_exc()
    err = QwenTuneError(f"{PEER_LOST} {info.world_size}-process run ended, so rank {info.rank} "
                        f"stopped too ({text.splitlines()[0][:200]})",
                        "See train.log for the process that ended first; resume continues from the newest "
                        "checkpoint.", kind="run")
    err.__cause__ = exc
    return err
