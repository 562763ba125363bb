"""The trainer's eyes and ears: metrics.jsonl, status.json, GPU peaks, the stop file.

Imported only by the worker (lazily), so transformers may be imported at the top.

The training thread does as little as possible per step: a file-exists check for the stop file, two
counters and one perf_counter reading. Everything that can wait on a disk, a pipe or the GPU driver
(the metrics line, status.json, the NVML reading, the console line that train.log copies) is handed
to a :class:`LogWriter` thread through a queue, so a slow disk never stalls a step. The queue is
drained in order when training ends, stops or fails (``ProgressCallback.flush``), so every line
lands. Nothing here calls ``.item()`` on a GPU tensor: the loss and grad norm arrive in ``on_log``
as the Python floats the HF Trainer already made.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from core.fmt import duration
from core.train import runs

GIB = 2**30
TPS_WINDOW = 5  # logging intervals averaged for tokens/s
# status.json holds the latest values only and the GUI polls it every 1.5 s: writing it more often
# than this would only spend the writer thread's time (and the GIL the training thread needs).
STATUS_INTERVAL_S = 0.5


class GpuSampler:
    """GPU memory and utilisation of the device this process trains on (NVML + torch counters).

    Safe to call from the writer thread: the device index is fixed here, and the torch counters read
    host-side bookkeeping (no GPU synchronisation)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.handle = None
        self.nvml = None
        self.name = ""
        self.device = None
        self.nvml_peak_gib = 0.0
        # This process's own share of the card (NVML's per-process count): what the run itself uses
        # when other processes share the card, where the device-wide figure counts them too. None
        # where NVML does not list this process (a container whose PIDs it cannot see).
        self.process_peak_gib: float | None = None
        self.pid = os.getpid()
        if not self.cuda:
            return
        self.device = torch.cuda.current_device()
        self.name = torch.cuda.get_device_name(self.device)
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(self.device).uuid)
            try:
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
            except pynvml.NVMLError:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.device)
            self.nvml = pynvml
        except Exception as exc:  # NVML missing or refused: memory still comes from torch
            print(f"note: NVML unavailable ({exc}); GPU utilisation will not be shown", flush=True)

    def sample(self) -> dict:
        """Current memory use and utilisation; also tracks the NVML peak."""
        if not self.cuda:
            return {"gpu_mem_gib": None, "gpu_util": None}
        used = util = None
        if self.handle is not None:
            try:
                used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / GIB
                util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            except self.nvml.NVMLError:
                used = util = None
        if used is None:
            used = self.torch.cuda.memory_reserved(self.device) / GIB
        else:
            self._sample_process()
        self.nvml_peak_gib = max(self.nvml_peak_gib, used)
        return {"gpu_mem_gib": round(used, 3), "gpu_util": util}

    def _sample_process(self) -> None:
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except self.nvml.NVMLError:
            return
        mine = next((p for p in procs if p.pid == self.pid), None)
        used = getattr(mine, "usedGpuMemory", None)
        if isinstance(used, int) and used > 0:  # None / NVML's "not available" sentinel otherwise
            self.process_peak_gib = max(self.process_peak_gib or 0.0, used / GIB)

    def peaks(self) -> dict:
        if not self.cuda:
            return {}
        out = {"peak_alloc_gib": round(self.torch.cuda.max_memory_allocated(self.device) / GIB, 3),
               "peak_reserved_gib": round(self.torch.cuda.max_memory_reserved(self.device) / GIB, 3),
               "nvml_used_gib": round(self.nvml_peak_gib, 3), "gpu_name": self.name}
        if self.process_peak_gib is not None:
            out["nvml_process_gib"] = round(self.process_peak_gib, 3)
        return out


class LogWriter:
    """A thread that writes metrics lines, status updates and console lines in the order they were
    submitted. ``submit`` never blocks; ``flush`` waits until everything submitted so far is written.

    Status updates are merged and written at most every ``status_interval_s`` (and at every flush);
    metrics lines are all written, each batch flushed to the file at once. ``gpu`` (a GpuSampler)
    fills in the memory and utilisation of each row as it is written, off the training thread.
    ``write_status`` and ``open_metrics`` can be replaced (tests inject a slow disk). An error in the
    thread is re-raised by the next ``flush`` so a broken disk is reported, not hidden."""

    def __init__(self, run_dir: str | Path, gpu=None, echo=print, write_status=None, open_metrics=None,
                 status_interval_s: float = STATUS_INTERVAL_S):
        self.run_dir = Path(run_dir)
        self.gpu = gpu
        self.echo = echo
        self.write_status = write_status or (lambda **kw: runs.write_status(self.run_dir, **kw))
        self.open_metrics = open_metrics or (lambda: (self.run_dir / runs.METRICS).open("a", encoding="utf-8"))
        self.queue: queue.Queue = queue.Queue()
        self.status_interval_s = status_interval_s
        self.pending_status: dict = {}
        self.last_status = 0.0
        self.error: BaseException | None = None
        self.file = None
        self.thread: threading.Thread | None = None

    # -- the training thread's side
    def submit(self, kind: str, payload, line=None) -> None:
        """kind: "row" (a metrics dict; the GPU fields are filled in here, then ``line(row)``, if
        given, is echoed), "status" (kwargs for write_status; the GPU peaks are added here), "echo"
        (a console line)."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._loop, daemon=True, name="train-log-writer")
            self.thread.start()
        self.queue.put((kind, payload, line))

    def flush(self) -> None:
        """Block until every submitted item is written; re-raise the thread's error, if any."""
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(("flush", None, None))
            self.queue.join()
        if self.error is not None:
            exc, self.error = self.error, None
            raise RuntimeError(f"writing the training log failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Flush, stop the thread and close metrics.jsonl."""
        try:
            self.flush()
        finally:
            if self.thread is not None and self.thread.is_alive():
                self.queue.put(None)
                self.thread.join(timeout=30)
            self.thread = None
            if self.file is not None:
                self.file.close()
                self.file = None

    # -- the writer thread
    def _loop(self) -> None:
        while True:
            timeout = None  # with a status update waiting, wake up when it is due
            if self.pending_status:
                timeout = max(0.0, self.last_status + self.status_interval_s - time.monotonic())
            try:
                batch = [self.queue.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            while True:  # take what else is waiting, so a slow disk costs one write per batch
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in batch)
            force = stop or any(item is not None and item[0] == "flush" for item in batch)
            try:
                self._write([item for item in batch if item is not None and item[0] != "flush"])
                if self.pending_status and (force or time.monotonic() - self.last_status >= self.status_interval_s):
                    self._write_status()
            except BaseException as exc:  # kept and raised by flush(): the trainer must hear of it
                if self.error is None:
                    self.error = exc
                self.pending_status = {}
            finally:
                for _ in batch:
                    self.queue.task_done()
            if stop:
                return

    def _write_status(self) -> None:
        status, self.pending_status = self.pending_status, {}
        if self.gpu is not None:
            status.update(self.gpu.peaks())
        self.last_status = time.monotonic()
        self.write_status(**status)

    def _write(self, batch: list) -> None:
        lines: list[str] = []
        for kind, payload, line in batch:
            if kind == "row":
                row = dict(payload)
                if self.gpu is not None and "gpu_mem_gib" not in row:
                    row.update(self.gpu.sample())
                lines.append(json.dumps(row))
                if line is not None:
                    self._write_lines(lines)
                    lines = []
                    self.echo(line(row))
            elif kind == "status":
                self.pending_status.update(payload)
            elif kind == "echo":
                self._write_lines(lines)
                lines = []
                self.echo(payload)
            else:
                raise ValueError(f"unknown log item {kind!r}")
        self._write_lines(lines)

    def _write_lines(self, lines: list[str]) -> None:
        if not lines:
            return
        if self.file is None:
            self.file = self.open_metrics()
        self.file.write("".join(line + "\n" for line in lines))
        self.file.flush()


class TokenCounter:
    """Counts the real (non-padding) tokens of training batches, on the CPU, in the collator.

    Counting there costs nothing on the GPU (the trainer's own counter syncs the GPU every micro-step).
    """

    def __init__(self, echo=print):
        self.tokens = 0
        self.paused = False
        self.echo = echo
        self.first = True

    def wrap(self, collator):
        original = collator.torch_call if hasattr(collator, "torch_call") else None
        if original is None:
            return False

        def counting_call(examples):
            batch = original(examples)
            if not self.paused:
                n = sum(len(e["input_ids"]) for e in examples if "input_ids" in e)
                self.tokens += n
                if self.first:  # one line that shows the loss mask really reached the trainer
                    self.first = False
                    labels = batch.get("labels") if hasattr(batch, "get") else None
                    trained = int((labels != -100).sum()) if labels is not None else None
                    self.echo(f"first batch: {len(examples)} rows, {n} tokens, {trained} trained, "
                              f"shape {tuple(batch['input_ids'].shape)}")
            return batch

        collator.torch_call = counting_call
        return True


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


# What the preference and RL trainers log beside the loss, kept in metrics.jsonl under TRL's own names
# (the Train tab's stage panels read them): DPO / ORPO's rewards/chosen, rewards/margins, logps/...,
# GRPO's reward, rewards/<name>/mean, kl, completions/mean_length, ...
STAGE_PREFIXES = ("rewards/", "logps/", "logits/", "completions/", "clip_ratio", "sampling/")
STAGE_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "nll_loss", "log_odds_ratio",
              "log_odds_chosen")


def stage_metrics(logs: dict) -> dict:
    """The stage metrics of one log (``eval_`` ones too), cleaned for JSON."""
    out = {}
    for key, value in logs.items():
        name = key[5:] if key.startswith("eval_") else key
        if name in STAGE_KEYS or name.startswith(STAGE_PREFIXES):
            value = _clean(value)
            if value is None or isinstance(value, (int, float)):
                out[key] = value
    return out


def step_line(row: dict) -> str:
    """The console / train.log line of one training step."""
    mem = f" | {row['gpu_mem_gib']:.1f} GiB" if row.get("gpu_mem_gib") is not None else ""
    lr = row["learning_rate"]
    loss = row["loss"]
    stage = ""  # the number each stage is judged by: GRPO's reward, DPO / ORPO's margin
    if row.get("reward") is not None:
        stage = f" | reward {row['reward']:.3f}"
    elif row.get("rewards/margins") is not None:
        stage = f" | margin {row['rewards/margins']:.3f}"
    return (f"step {row['step']}/{row['total_steps']} | loss {loss if loss is None else f'{loss:.4f}'}{stage}"
            f" | lr {lr if lr is None else f'{lr:.2e}'} | {row['tokens_per_s'] or 0:.0f} tok/s{mem}"
            f" | eta {duration(row['eta_s'])}")


class ProgressCallback(TrainerCallback):
    """Writes metrics.jsonl and status.json, checks the stop file, tracks GPU peaks.

    During training every write goes through a :class:`LogWriter` thread; before and after it
    (setup, the final evaluation) writes are direct, so they are ordered with the worker's own
    status writes. Call :meth:`flush` when ``trainer.train`` ends by an exception."""

    def __init__(self, run_dir: str | Path, counter: TokenCounter, gpu: GpuSampler, echo=print,
                 writer: LogWriter | None = None, group=None):
        self.run_dir = Path(run_dir)
        # ddp / fsdp (a core.train.ranks.Group): every rank runs this callback and takes part in its
        # collectives (the stop decision, the token count); only rank 0 writes.
        self.group = group
        self.main = group is None or group.main
        self.stop_path = self.run_dir / runs.STOP_FLAG
        self.counter = counter
        self.gpu = gpu
        self.echo = echo
        self.writer = writer or LogWriter(run_dir, gpu=gpu, echo=echo)
        self.training = False
        self.stop_requested = False
        self.t0 = None
        self.first_step = 0
        self.window: list[tuple[float, int]] = []  # (time, tokens) of the last logs
        self.total_steps = 0
        self.last_loss = None
        self.last_eval_loss = None
        self.last_eval_step = None
        # Tests (and demos of stop / resume) slow each step down so a human or a test can act mid-run.
        self.step_delay = float(os.environ.get("QWENTUNE_STEP_DELAY_S") or 0)

    # -- helpers
    def _emit(self, kind: str, payload, line=None) -> None:
        if not self.main:
            return
        if self.writer.error is not None:
            self.writer.flush()  # raises: a log that cannot be written stops the run, loudly
        self.writer.submit(kind, payload, line)
        if not self.training:
            self.writer.flush()

    def flush(self) -> None:
        """Write everything still queued (training ended, stopped or failed)."""
        self.training = False
        self.writer.close()

    def tokens_total(self) -> int:
        """Training tokens so far, over every rank (a collective under ddp / fsdp)."""
        if self.group is None:
            return self.counter.tokens
        return self.group.total(self.counter.tokens)

    def _eta(self, step: int) -> float | None:
        done = step - self.first_step
        if done <= 0 or self.t0 is None:
            return None
        per_step = (time.perf_counter() - self.t0) / done
        return max(0.0, (self.total_steps - step) * per_step)

    # -- trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()
        self.window = [(self.t0, self.counter.tokens)]
        self.first_step = state.global_step
        self.total_steps = state.max_steps
        if self.gpu.cuda:  # peaks of training, not of loading (a 16-bit shard may pass through on load)
            self.gpu.torch.cuda.reset_peak_memory_stats()
        if self.main:
            runs.write_status(self.run_dir, state="running", phase="training", step=state.global_step,
                              total_steps=state.max_steps, train_started=runs.now_iso())
            self.echo(f"training: {state.max_steps} steps (starting at step {state.global_step})"
                      + self._batch_words(args))
        self.training = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_delay:
            time.sleep(self.step_delay)
        if not self.stop_requested and self._stop_asked():
            self.stop_requested = True
            self._emit("status", {"state": "stopping"})
            self._emit("echo", f"stop requested: ending after step {state.global_step} and saving the adapter")
        if self.stop_requested:
            control.should_training_stop = True
            control.should_save = True  # a checkpoint at the stop point, so resume continues here
        return control

    def _stop_asked(self) -> bool:
        """The stop file is there. Under ddp / fsdp rank 0 looks and every rank gets its answer
        (one broadcast per step), so all stop on the same step and save one checkpoint."""
        asked = self.stop_path.exists() if self.main else False
        return self.group.decide(asked) if self.group is not None else asked

    def _batch_words(self, args) -> str:
        if args is None:
            return ""
        world = self.group.world_size if self.group is not None else 1
        mb, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
        if world == 1:
            return f"; batch {mb} x {accum} accumulation = {mb * accum} rows per step"
        return (f"; batch {mb} x {accum} accumulation x {world} processes = {mb * accum * world} rows per step "
                f"({self.group.strategy})")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        now = time.perf_counter()
        step = state.global_step
        if "eval_loss" in logs:
            self.last_eval_loss = _clean(logs.get("eval_loss"))
            self.last_eval_step = step
            row = {"step": step, "total_steps": self.total_steps, "epoch": _clean(state.epoch),
                   "loss": None, "eval_loss": self.last_eval_loss, "learning_rate": None,
                   "grad_norm": None, "tokens_per_s": None, "tokens": self.tokens_total(),
                   "elapsed_s": round(now - self.t0, 3) if self.t0 else None, "eta_s": self._eta(step),
                   **stage_metrics(logs)}
            self._emit("row", row)
            self._emit("status", {"eval_loss": self.last_eval_loss})
            self._emit("echo", f"step {step}: eval loss {self.last_eval_loss}")
            return
        if "loss" not in logs:
            return  # the end-of-training summary; the worker reports it
        tokens = self.tokens_total()
        # Over the last few logs: tokens are counted as batches are collated, one batch ahead of the
        # step that trains them, so a single interval jitters (most at epoch ends).
        self.window = (self.window + [(now, tokens)])[-(TPS_WINDOW + 1):]
        t_old, tok_old = self.window[0]
        tps = (tokens - tok_old) / (now - t_old) if now > t_old else None
        self.last_loss = _clean(logs.get("loss"))
        eta = self._eta(step)
        row = {"step": step, "total_steps": self.total_steps, "epoch": _clean(state.epoch),
               "loss": self.last_loss, "eval_loss": None,
               "learning_rate": _clean(logs.get("learning_rate")), "grad_norm": _clean(logs.get("grad_norm")),
               "tokens_per_s": round(tps, 1) if tps is not None else None, "tokens": tokens,
               "elapsed_s": round(now - self.t0, 3), "eta_s": round(eta, 1) if eta is not None else None,
               **stage_metrics(logs)}
        self._emit("row", row, line=step_line)
        self._emit("status", {"step": step, "total_steps": self.total_steps, "epoch": row["epoch"],
                              "loss": self.last_loss, "learning_rate": row["learning_rate"], "tokens": tokens,
                              "eta_s": row["eta_s"], "elapsed_s": row["elapsed_s"]})

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()
