"""GPU work in one queue: may this piece of GPU work start now, next to the training runs?

Training runs in its own process and holds the GPU for hours; chat and evaluation run in the web
server. Both on one card is fine when they fit, and an out-of-memory crash of the *training* when
they do not. The rule (:func:`may_start_gpu_work`):

* demo mode, work on the CPU or no NVIDIA GPU: always allowed (CPU work does not compete for VRAM);
* every card the work would use is judged on its own; a training run counts on every card it
  holds (``gpus`` in its status.json, else the cards its train.gpus / train.strategy name), so a
  run on GPU 1 does not hold up chat on GPU 0;
* no active training run (queued / running / stopping, per its run folder) on the work's cards:
  allowed;
* active runs on a card: allowed only when the estimator says they all fit - the work's estimate
  plus each run's peak on that card (the larger of its per-card estimate and its measured peak)
  within 95% of the card's memory - and the work's estimate fits in the memory free right now;
  otherwise refused, with the numbers of the first card that does not fit.

Needs are per card: a ddp / fsdp run needs its per-card estimate on each of its cards
(:func:`may_start_run` judges a whole RunConfig that way).

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
    gpu_index: int | None = None  # the card the decision is about (the first that does not fit)
    gpus: list[int] = field(default_factory=list)  # every card the work would use

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


def visible_gpu_ids(hardware) -> list[int]:
    """NVML indexes of the cards this process may use, in CUDA's order: CUDA_VISIBLE_DEVICES (as
    ids) where it is set, else every card."""
    import os

    indexes = [g.index for g in getattr(hardware, "gpus", []) or []]
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None or not text.strip():
        return indexes
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):  # UUIDs or MIG names: the order is CUDA's, not ours
        return indexes
    return [int(p) for p in parts if int(p) in indexes]


def resolve_gpu_ids(setting, strategy: str, visible: list[int]) -> list[int]:
    """The cards (NVML indexes) a run with ``train.gpus`` = ``setting`` and ``train.strategy`` takes
    out of the ``visible`` ones (visible_gpu_ids): auto = the first for single, every one for ddp /
    fsdp; a count (2) = the first that many; a list (0,1; one id alone "1,") = those, numbered as
    the launcher numbers them: within CUDA_VISIBLE_DEVICES where it is set (core.train.launch).
    A single-process run uses the first of them; ids that are not there are left out."""
    from core.settings import ConfigError
    from core.train.launch import parse_gpus

    if not visible:
        return []
    try:
        kind, value = parse_gpus(setting)
    except ConfigError:  # the pre-run check names the setting; here the run holds its first card
        kind, value = "first", None
    if kind == "auto":
        ids = list(visible) if strategy != "single" else visible[:1]
    elif kind == "ids":
        ids = [visible[i] for i in value if i < len(visible)]
    elif kind == "count":
        ids = list(visible[:value])
    else:
        ids = visible[:1]
    return ids[:1] if strategy == "single" else ids


def run_gpu_ids(run: dict, visible: list[int], cfg=None) -> list[int]:
    """The cards (NVML indexes) an active run holds: its status's ``gpus`` once the launcher wrote
    them (numbered within CUDA_VISIBLE_DEVICES, like train.gpus), else the ones its settings name (a
    queued run, or a run folder from before several GPUs)."""
    status = run.get("status") or {}
    held = status.get("gpus")
    if isinstance(held, list) and held and all(isinstance(g, int) and not isinstance(g, bool) for g in held):
        return [visible[g] if g < len(visible) else g for g in held]
    if cfg is None:
        cfg = _run_config(run)[0]
    if cfg is None:
        return visible[:1]
    return resolve_gpu_ids(cfg.train.gpus, cfg.train.strategy, visible) or visible[:1]


def _run_config(run: dict):
    from core.config import load_run_config
    from core.settings import ConfigError

    try:
        return load_run_config(Path(run["path"]) / "config.yaml"), ""
    except ConfigError as exc:
        return None, str(exc)


def training_peak_gib(run: dict, cards: int | None = None) -> tuple[float | None, str]:
    """(peak GiB of a run on each of its cards, why unknown): the larger of the estimator's
    per-card figure for its config (stage, strategy and ``cards`` included; default the count its
    status or settings give) and the peak the worker measured so far; None when neither is known."""
    from core.settings import ConfigError

    status = run.get("status") or {}
    measured = status.get("peak_alloc_gib")
    estimate = None
    cfg, why = _run_config(run)
    if cfg is not None:
        from core.hardware.estimate import estimate_run
        from core.train.autobatch import planned_micro_batch

        if cards is None:
            held = status.get("gpus")
            cards = len(held) if isinstance(held, list) and held else status.get("world_size")
        model = status.get("model_path") or cfg.model.name_or_path
        backend = status.get("backend") or cfg.model.backend
        try:
            estimate = estimate_run(cfg, model=model, backend=backend,
                                    micro_batch=planned_micro_batch(cfg.train.micro_batch, status),
                                    gpus=cards if isinstance(cards, int) and cards > 0 else None).total_gib
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
                       device: str = "auto", hardware=None, gpus: list[int] | None = None) -> GpuDecision:
    """May GPU work of ``kind`` (chat, eval, train, export) start now, given the active training runs?

    Give ``need_gib`` (the work's VRAM on each of its cards, e.g. from the estimator), or ``model``
    (+ method, context, adapter rank) to have the inference estimate computed here. ``resident_gib``
    is what the work already holds on the card (e.g. ``torch.cuda.memory_allocated()`` of a loaded
    chat model before the next generation): it counts toward "both fit" but is not needed again
    from the free memory. ``hardware`` is a core.hardware.detect report (read fresh when omitted);
    ``gpus`` the NVML indexes of the cards the work uses (default: the first visible one, where
    chat, evaluation and single-GPU training run; resolve_gpu_ids turns a train.gpus value into
    them); ``exclude_run`` leaves out the run the work belongs to (e.g. a run about to be resumed).
    ``device="cpu"``: the work runs on the CPU (e.g. ``--device cpu``), so it is always allowed."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if demo or device == "cpu":
        return GpuDecision(True, "cpu")
    if hardware is None:
        from core.hardware.detect import detect

        hardware = detect()
    cards = {g.index: g for g in list(getattr(hardware, "gpus", []) or [])}
    if not cards:
        return GpuDecision(True, "cpu")
    visible = visible_gpu_ids(hardware) or list(cards)
    wanted = [g for g in (gpus if gpus else visible[:1]) if g in cards] or visible[:1]
    if need_gib is None and model:
        need_gib = inference_need_gib(model, method=method, context_len=context_len, adapter_rank=adapter_rank)
    to_allocate = None if need_gib is None else max(0.0, need_gib - resident_gib)
    holders = []  # (run, its cards, its per-card peak, why unknown)
    for run in active_runs(runs_dir, exclude=exclude_run):
        cfg, _ = _run_config(run)
        held = run_gpu_ids(run, visible, cfg)
        if set(held) & set(wanted):
            peak, why = training_peak_gib(run, cards=len(held))
            holders.append((run, held, peak, why))

    def base(gpu) -> dict:
        return {"gpu": gpu.name, "total_gib": _gib(gpu.total_gib), "free_gib": _gib(gpu.free_gib),
                "need_gib": _gib(need_gib)}

    if not holders:
        for index in wanted:
            gpu = cards[index]
            if to_allocate is not None and to_allocate > gpu.free_gib:
                # Told, not refused: nothing else of ours is on the card, so waiting would not help.
                return GpuDecision(True, "too_big", base(gpu), gpu_index=index, gpus=wanted)
        return GpuDecision(True, "idle", base(cards[wanted[0]]), gpu_index=wanted[0], gpus=wanted)
    verdict = None
    for index in wanted:
        gpu = cards[index]
        on_card = [h for h in holders if index in h[1]]
        if not on_card:  # none of our runs there: a lack of free memory is not something to wait for
            continue
        names = ", ".join(h[0]["name"] for h in on_card)
        values = dict(base(gpu), run=names)
        if need_gib is None or any(h[2] is None for h in on_card):
            detail = "; ".join(h[3] for h in on_card if h[3]) or "the model's size is not known"
            return GpuDecision(False, "busy_unknown", dict(values, detail=detail), run=names, gpu_index=index,
                               gpus=wanted)
        train_gib = sum(h[2] for h in on_card)
        values["train_gib"] = _gib(train_gib)
        fits = need_gib + train_gib <= gpu.total_gib * USABLE_FRACTION and to_allocate <= gpu.free_gib
        if not fits:
            return GpuDecision(False, "busy", values, run=names, gpu_index=index, gpus=wanted)
        verdict = verdict or GpuDecision(True, "fits", values, run=names, gpu_index=index, gpus=wanted)
    return verdict


def may_start_run(cfg, *, runs_dir: str | Path, hardware=None, exclude_run: str | None = None,
                  micro_batch: int | None = None) -> GpuDecision:
    """May the training run ``cfg`` (a RunConfig) start now next to the active runs? Its cards
    (train.gpus / train.strategy) each need its per-card estimate; a card another run holds is
    shared only when both fit. ``micro_batch``: the one to judge when the setting is auto (default
    the reference micro-batch auto starts from)."""
    from core.hardware.estimate import estimate_run
    from core.settings import ConfigError
    from core.train.autobatch import planned_micro_batch

    if hardware is None:
        from core.hardware.detect import detect

        hardware = detect()
    visible = visible_gpu_ids(hardware)
    ids = resolve_gpu_ids(cfg.train.gpus, cfg.train.strategy, visible)
    try:
        need = estimate_run(cfg, micro_batch=micro_batch or planned_micro_batch(cfg.train.micro_batch),
                            gpus=max(len(ids), 1)).total_gib
    except (ConfigError, KeyError, ValueError, OSError):
        need = None
    return may_start_gpu_work("train", runs_dir=runs_dir, need_gib=need, hardware=hardware,
                              exclude_run=exclude_run, gpus=ids)
