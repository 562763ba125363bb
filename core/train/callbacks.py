"""The trainer's eyes and ears: metrics.jsonl, status.json, GPU peaks, the stop file.

Imported only by the worker (lazily), so transformers may be imported at the top. The work per step
is kept tiny on purpose (a file-exists check, two cheap counters, an NVML query): the speed benchmark
compares this code path with a bare Unsloth loop.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from core.fmt import duration
from core.train import runs

GIB = 2**30
TPS_WINDOW = 5  # logging intervals averaged for tokens/s


class GpuSampler:
    """GPU memory and utilisation of the device this process trains on (NVML + torch counters)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.handle = None
        self.nvml = None
        self.name = ""
        self.nvml_peak_gib = 0.0
        if not self.cuda:
            return
        self.name = torch.cuda.get_device_name()
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
            try:
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
            except pynvml.NVMLError:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
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
            used = self.torch.cuda.memory_reserved() / GIB
        self.nvml_peak_gib = max(self.nvml_peak_gib, used)
        return {"gpu_mem_gib": round(used, 3), "gpu_util": util}

    def peaks(self) -> dict:
        if not self.cuda:
            return {}
        return {"peak_alloc_gib": round(self.torch.cuda.max_memory_allocated() / GIB, 3),
                "nvml_used_gib": round(self.nvml_peak_gib, 3), "gpu_name": self.name}


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


class ProgressCallback(TrainerCallback):
    """Writes metrics.jsonl and status.json, checks the stop file, tracks GPU peaks."""

    def __init__(self, run_dir: str | Path, counter: TokenCounter, gpu: GpuSampler, echo=print):
        self.run_dir = Path(run_dir)
        self.stop_path = self.run_dir / runs.STOP_FLAG
        self.counter = counter
        self.gpu = gpu
        self.echo = echo
        self.stop_requested = False
        self.t0 = None
        self.first_step = 0
        self.window: list[tuple[float, int]] = []  # (time, tokens) of the last logs
        self.total_steps = 0
        self.last_loss = None
        self.last_eval_loss = None
        self.last_eval_step = None
        self.last_gpu: dict = {}
        self.metrics_file = None
        # Tests (and demos of stop / resume) slow each step down so a human or a test can act mid-run.
        self.step_delay = float(os.environ.get("QWENTUNE_STEP_DELAY_S") or 0)

    # -- helpers
    def _write_line(self, row: dict) -> None:
        if self.metrics_file is None:
            self.metrics_file = (self.run_dir / runs.METRICS).open("a", encoding="utf-8")
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()

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
        runs.write_status(self.run_dir, state="running", phase="training", step=state.global_step,
                          total_steps=state.max_steps, train_started=runs.now_iso())
        self.echo(f"training: {state.max_steps} steps (starting at step {state.global_step})")

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_delay:
            time.sleep(self.step_delay)
        self.last_gpu = self.gpu.sample()
        if not self.stop_requested and self.stop_path.exists():
            self.stop_requested = True
            runs.write_status(self.run_dir, state="stopping")
            self.echo(f"stop requested: ending after step {state.global_step} and saving the adapter")
        if self.stop_requested:
            control.should_training_stop = True
            control.should_save = True  # a checkpoint at the stop point, so resume continues here
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        now = time.perf_counter()
        step = state.global_step
        is_eval = "eval_loss" in logs
        if is_eval:
            self.last_eval_loss = _clean(logs.get("eval_loss"))
            self.last_eval_step = step
            row = {"step": step, "total_steps": self.total_steps, "epoch": _clean(state.epoch),
                   "loss": None, "eval_loss": self.last_eval_loss, "learning_rate": None,
                   "grad_norm": None, "tokens_per_s": None, "tokens": self.counter.tokens,
                   "gpu_mem_gib": self.last_gpu.get("gpu_mem_gib"), "gpu_util": self.last_gpu.get("gpu_util"),
                   "elapsed_s": round(now - self.t0, 3) if self.t0 else None, "eta_s": self._eta(step)}
            self._write_line(row)
            runs.write_status(self.run_dir, eval_loss=self.last_eval_loss, **self.gpu.peaks())
            self.echo(f"step {step}: eval loss {self.last_eval_loss}")
            return
        if "loss" not in logs:
            return  # the end-of-training summary; the worker reports it
        tokens = self.counter.tokens
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
               "gpu_mem_gib": self.last_gpu.get("gpu_mem_gib"), "gpu_util": self.last_gpu.get("gpu_util"),
               "elapsed_s": round(now - self.t0, 3), "eta_s": round(eta, 1) if eta is not None else None}
        self._write_line(row)
        runs.write_status(self.run_dir, step=step, total_steps=self.total_steps, epoch=row["epoch"],
                          loss=self.last_loss, learning_rate=row["learning_rate"], tokens=tokens,
                          eta_s=row["eta_s"], elapsed_s=row["elapsed_s"], **self.gpu.peaks())
        mem = f" | {row['gpu_mem_gib']:.1f} GiB" if row["gpu_mem_gib"] is not None else ""
        lr = row["learning_rate"]
        self.echo(f"step {step}/{self.total_steps} | loss {self.last_loss:.4f} | lr {lr if lr is None else f'{lr:.2e}'}"
                  f" | {row['tokens_per_s'] or 0:.0f} tok/s{mem} | eta {duration(row['eta_s'])}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
