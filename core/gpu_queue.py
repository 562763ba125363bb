"""GPU work in one queue: may this piece of GPU work start now, next to the training runs?

Training runs in its own process and holds the GPU for hours; chat and evaluation run in the web
server. Both on one card is fine when they fit, and an out-of-memory crash of the *training* when
they do not. The rule (:func:`may_start_gpu_work`):

* demo mode, work on the CPU or no NVIDIA GPU: always allowed (CPU work does not compete for VRAM);
* no active training run (queued / running / stopping, per its run folder): allowed;
* an active run: allowed only when the estimator says both fit - the work's estimate plus the
  run's peak (the larger of its estimate and its measured peak) within 95% of the card's memory -
  and the work's estimate fits in the memory free right now; otherwise refused, with the numbers.

The decision carries a reason ``code``; the GUI shows ``ctx.t(decision.key, **decision.values)``
(strings ``gpu_queue.<code>`` in gui/strings/app.yaml) and the CLI :meth:`GpuDecision.message`.
Nothing here imports torch; NVML is read through core.hardware.detect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("chat", "eval", "train", "export")
# The CLI's exit status when it refuses to start because a training run holds the GPU: sysexits'
# EX_TEMPFAIL ("try again later"), apart from 2 (a bad setting).
EXIT_GPU_BUSY = 75
# Headroom kept on the card for fragmentation and the CUDA contexts of two processes.
USABLE_FRACTION = 0.95

_EN = {
    "cpu": "Running on the CPU (no NVIDIA GPU in use).",
    "idle": "The GPU is free.",
    "fits": "Training run {run} is using the GPU, but both fit: about {need_gib} GiB needed here, "
            "{train_gib} GiB for the training, {total_gib} GiB on {gpu}.",
    "busy": "Waiting for the GPU: training run {run} is using it. This needs about {need_gib} GiB and "
            "the training about {train_gib} GiB, but {gpu} has {total_gib} GiB ({free_gib} GiB free now). "
            "Stop the run or wait until it ends, then try again.",
    "busy_unknown": "Waiting for the GPU: training run {run} is using it and its memory use cannot be "
                    "estimated ({detail}). Stop the run or wait until it ends, then try again.",
    "too_big": "This needs about {need_gib} GiB but {gpu} has only {free_gib} GiB free.",
}


@dataclass
class GpuDecision:
    allowed: bool
    code: str  # cpu | idle | fits | busy | busy_unknown | too_big
    values: dict[str, Any] = field(default_factory=dict)
    run: str | None = None  # the training run that holds the GPU, if any
    gpu_index: int | None = None  # the card the decision is about

    @property
    def key(self) -> str:
        """The GUI string key: ``ctx.t(decision.key, **decision.values)``."""
        return f"gpu_queue.{self.code}"

    def message(self) -> str:
        """The reason in English (CLI, logs)."""
        return _EN[self.code].format(**self.values)


def _gib(x: float | None) -> str:
    return "?" if x is None else f"{x:.1f}"


def active_runs(runs_dir: str | Path, exclude: str | None = None) -> list[dict]:
    """Training runs that hold (or are about to hold) the GPU, read from their folders."""
    from core.train.runs import ACTIVE, list_runs

    return [r for r in list_runs(runs_dir) if r["state"] in ACTIVE and r["name"] != exclude]


def training_peak_gib(run: dict) -> tuple[float | None, str]:
    """(peak GiB of a run, why unknown): the larger of the estimator's figure for its config and
    the peak the worker measured so far; None when neither is available."""
    from core.config import load_run_config
    from core.settings import ConfigError

    status = run.get("status") or {}
    measured = status.get("peak_alloc_gib")
    estimate = None
    why = ""
    config_path = Path(run["path"]) / "config.yaml"
    try:
        cfg = load_run_config(config_path)
    except ConfigError as exc:
        cfg, why = None, str(exc)
    if cfg is not None:
        from core.hardware.estimate import estimate_training
        from core.train.autobatch import planned_micro_batch

        model = status.get("model_path") or cfg.model.name_or_path
        backend = status.get("backend") or cfg.model.backend
        backend = backend if backend in ("unsloth", "peft") else "unsloth"
        optimizer = cfg.train.optimizer if cfg.train.optimizer != "auto" else "adamw_8bit"
        try:
            estimate = estimate_training(
                model, method=cfg.model.method, seq_len=cfg.train.max_seq_len,
                micro_batch=planned_micro_batch(cfg.train.micro_batch, status),
                rank=cfg.lora.r, target_modules=cfg.lora.target_modules,
                grad_ckpt=cfg.train.gradient_checkpointing, backend=backend, quant=cfg.model.quant,
                optimizer=optimizer,
            ).total_gib
        except (ConfigError, KeyError, ValueError) as exc:
            why = f"{cfg.model.name_or_path}: {exc}"
    known = [x for x in (estimate, measured) if isinstance(x, (int, float))]
    return (max(known) if known else None), why


def inference_need_gib(model: str, *, method: str = "lora", context_len: int = 4096,
                       adapter_rank: int = 0) -> float | None:
    """The estimator's VRAM for chatting with ``model`` (catalog key or local folder); None when
    the model's shape cannot be read (e.g. a hub id not downloaded yet)."""
    from core.hardware.estimate import estimate_inference
    from core.settings import ConfigError

    try:
        return estimate_inference(model, method=method, context_len=context_len,
                                  adapter_rank=adapter_rank).total_gib
    except (ConfigError, KeyError, ValueError, OSError):
        return None


def may_start_gpu_work(kind: str, *, runs_dir: str | Path, demo: bool = False, need_gib: float | None = None,
                       model: str | None = None, method: str = "lora", context_len: int = 4096,
                       adapter_rank: int = 0, resident_gib: float = 0.0, exclude_run: str | None = None,
                       device: str = "auto", hardware=None) -> GpuDecision:
    """May GPU work of ``kind`` (chat, eval, train, export) start now, given the active training runs?

    Give ``need_gib`` (the work's VRAM, e.g. from the estimator), or ``model`` (+ method, context,
    adapter rank) to have the inference estimate computed here. ``resident_gib`` is what the work
    already holds on the card (e.g. ``torch.cuda.memory_allocated()`` of a loaded chat model before
    the next generation): it counts toward "both fit" but is not needed again from the free memory.
    ``hardware`` is a core.hardware.detect report (read fresh when omitted); ``exclude_run`` leaves
    out the run the work belongs to (e.g. a run about to be resumed). ``device="cpu"``: the work
    runs on the CPU (e.g. ``--device cpu``), so it is always allowed."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if demo or device == "cpu":
        return GpuDecision(True, "cpu")
    if hardware is None:
        from core.hardware.detect import detect

        hardware = detect()
    gpus = list(getattr(hardware, "gpus", []) or [])
    if not gpus:
        return GpuDecision(True, "cpu")
    if need_gib is None and model:
        need_gib = inference_need_gib(model, method=method, context_len=context_len, adapter_rank=adapter_rank)
    # Single-process training uses the first visible card, and so does the chat engine.
    gpu = gpus[0]
    base = {"gpu": gpu.name, "total_gib": _gib(gpu.total_gib), "free_gib": _gib(gpu.free_gib),
            "need_gib": _gib(need_gib)}
    runs = active_runs(runs_dir, exclude=exclude_run)
    to_allocate = None if need_gib is None else max(0.0, need_gib - resident_gib)
    if not runs:
        if to_allocate is not None and to_allocate > gpu.free_gib:
            # Told, not refused: nothing else of ours is on the card, so waiting would not help.
            return GpuDecision(True, "too_big", base, gpu_index=gpu.index)
        return GpuDecision(True, "idle", base, gpu_index=gpu.index)
    names = ", ".join(r["name"] for r in runs)
    peaks, whys = [], []
    for run in runs:
        peak, why = training_peak_gib(run)
        peaks.append(peak)
        if why:
            whys.append(why)
    values = dict(base, run=names)
    if need_gib is None or any(p is None for p in peaks):
        detail = "; ".join(whys) or "the model's size is not known"
        return GpuDecision(False, "busy_unknown", dict(values, detail=detail), run=names, gpu_index=gpu.index)
    train_gib = sum(peaks)
    values["train_gib"] = _gib(train_gib)
    both_fit = need_gib + train_gib <= gpu.total_gib * USABLE_FRACTION and to_allocate <= gpu.free_gib
    return GpuDecision(both_fit, "fits" if both_fit else "busy", values, run=names, gpu_index=gpu.index)
