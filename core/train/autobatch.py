"""``train.micro_batch: auto``: the largest micro-batch the memory estimator says fits the card.

A bigger micro-batch is the cheapest speed-up there is (the 8B QLoRA bare loop on an H200: 9,259
tokens/s at 2048 x 2, 11,011 at 1024 x 8), but the learning dynamics depend on the effective batch
(rows per optimizer step), so that stays fixed:

    effective batch  E = REFERENCE_MICRO_BATCH x grad_accum   (2 x 4 = 8 rows with the defaults)
    micro-batch      m = the largest divisor of E whose estimated peak fits the card
                         with SAFETY_MARGIN of its memory left free
    accumulation       E / m

so ``micro_batch: auto, grad_accum: 4`` trains exactly what ``micro_batch: 2, grad_accum: 4`` trains,
only with fewer, larger steps. The estimate is taken at ``max_seq_len`` for every row (the worst
case of padded and bucketed batches). Without a CUDA GPU there is nothing to fit: auto is
REFERENCE_MICRO_BATCH. The choice and the reason go to train.log and status.json.

``QWENTUNE_GPU_MEMORY_GIB`` (an environment variable) makes the run behave as on a card of that
size: the process's CUDA allocator is capped there and auto fits that budget (bench/fit_cards.py
emulates 12-48 GB cards this way on a large GPU).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from core.hardware.estimate import HEADROOM
from core.settings import ConfigError

AUTO = "auto"
REFERENCE_MICRO_BATCH = 2  # what grad_accum counts in auto mode, and auto's value without a GPU
# Share of the card left free (other programs, the estimator's error): the Hardware tab's headroom.
SAFETY_MARGIN = HEADROOM
GIB = float(1 << 30)
CAP_ENV = "QWENTUNE_GPU_MEMORY_GIB"


@dataclass(frozen=True)
class Choice:
    micro_batch: int
    grad_accum: int
    effective_batch: int
    reason: str
    est_gib: float | None = None  # estimated peak (what nvidia-smi would show) at the chosen micro-batch
    budget_gib: float | None = None  # card memory x (1 - SAFETY_MARGIN)
    fits: bool = True  # False: even micro-batch 1 is estimated over the budget

    def to_dict(self) -> dict:
        return asdict(self)


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def effective_batch(grad_accum: int, micro_batch=AUTO) -> int:
    """Rows per optimizer step of a (micro_batch, grad_accum) setting; auto counts REFERENCE rows."""
    return (REFERENCE_MICRO_BATCH if is_auto(micro_batch) else int(micro_batch)) * int(grad_accum)


def planned_micro_batch(micro_batch, status: dict | None = None) -> int:
    """An int to estimate a run with before it has chosen (the chosen value once status says it)."""
    if not is_auto(micro_batch):
        return int(micro_batch)
    chosen = (status or {}).get("micro_batch")
    return chosen if isinstance(chosen, int) and chosen > 0 else REFERENCE_MICRO_BATCH


def divisors_up_to(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def choose_micro_batch(model, *, vram_gib: float | None, grad_accum: int, method: str, seq_len: int,
                       rank: int = 32, target_modules=None, grad_ckpt: str = "unsloth",
                       backend: str = "unsloth", quant: str = "auto", optimizer: str = "adamw_8bit",
                       stage: str = "sft", rl=None, precompute_ref: bool = False, strategy: str = "single",
                       gpus: int = 1, coefficients=None, rows: int | None = None) -> Choice:
    """The auto micro-batch for ``model`` (catalog key, model folder, Arch or catalog entry) on a
    card of ``vram_gib`` (None: no GPU). ``grad_accum`` is the setting as written (it counts
    micro-batches of REFERENCE_MICRO_BATCH rows); the returned accumulation keeps the effective
    batch exact. ``rows``: the rows this card trains per optimizer step, when that is not
    REFERENCE_MICRO_BATCH x grad_accum (one process of a ddp run trains its share).

    Everything is per card: with ``strategy`` ddp / fsdp over ``gpus`` cards the estimate is each
    card's (fsdp shards the model over them). ``stage`` / ``rl`` (train.stage, the rl section): a
    dpo / orpo row is a chosen + rejected pair; for grpo the micro-batch counts completions, and the
    rollouts decode all of this card's rows of a step at once (TRL generates for every accumulation
    step together)."""
    from core.config import ALL_LINEAR
    from core.hardware.estimate import estimate_training

    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ConfigError(f"must be a whole number >= 1, got {grad_accum!r}", "train.grad_accum")
    total = effective_batch(grad_accum) if rows is None else int(rows)
    if vram_gib is None or vram_gib <= 0:
        m = max(divisors_up_to(total, REFERENCE_MICRO_BATCH))
        return Choice(m, total // m, total,
                      f"micro-batch auto: no CUDA GPU, so {m} x {total // m} accumulation "
                      f"= {total} rows per step (nothing to fit on the CPU)")
    budget = vram_gib * (1 - SAFETY_MARGIN)
    opt = optimizer if optimizer != "auto" else "adamw_8bit"
    targets = list(target_modules or ALL_LINEAR)

    def est(m: int) -> float:
        return estimate_training(model, method=method, seq_len=seq_len, micro_batch=m, rank=rank,
                                 target_modules=targets, grad_ckpt=grad_ckpt, backend=backend, quant=quant,
                                 optimizer=opt, stage=stage, rl=rl, precompute_ref=precompute_ref,
                                 generation_batch=total if stage == "grpo" else None, strategy=strategy,
                                 gpus=gpus, coefficients=coefficients).total_gib

    # The estimate grows with the micro-batch, so the largest that fits is found by bisection.
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if est(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    room = f"{vram_gib:.1f} GiB less a {SAFETY_MARGIN:.0%} margin = {budget:.1f} GiB"
    unit = {"grpo": "completion", "dpo": "preference pair", "orpo": "preference pair"}.get(stage, "row")
    if lo == 0:
        one = est(1)
        return Choice(1, total, total,
                      f"micro-batch auto: even 1 {unit} of {seq_len} tokens is estimated at {one:.1f} GiB, over the "
                      f"{room}; training may run out of memory (shorter max_seq_len, QLoRA or a smaller model "
                      f"would fit)", round(one, 2), round(budget, 2), fits=False)
    m = max(divisors_up_to(total, lo))
    kind = "completions" if stage == "grpo" else "rows"
    source = f"{REFERENCE_MICRO_BATCH} x grad_accum {grad_accum}" if rows is None else "this GPU's share"
    per_card = f" per GPU ({gpus} GPUs, {strategy})" if strategy != "single" and gpus > 1 else ""
    why = (f"micro-batch auto: {m} x {total // m} accumulation = {total} {kind} per step{per_card} "
           f"({source}); estimated peak {est(m):.1f} GiB of {room}")
    if lo < total and m < lo:
        why += f"; {lo} would fit but does not divide {total}, so {m}"
    elif lo == total:
        why += "; the whole effective batch fits in one micro-batch"
    return Choice(m, total // m, total, why, round(est(m), 2), round(budget, 2))


def apply_memory_cap() -> float | None:
    """Cap this process's CUDA allocator at QWENTUNE_GPU_MEMORY_GIB (emulating a smaller card);
    returns the cap, or None when the variable is unset or there is no GPU."""
    text = os.environ.get(CAP_ENV, "").strip()
    if not text:
        return None
    try:
        cap = float(text)
    except ValueError:
        raise ConfigError(f"{CAP_ENV} must be a number of GiB, got {text!r}", CAP_ENV) from None
    import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(dev).total_memory / GIB
    if cap <= 0 or cap > total:
        raise ConfigError(f"{CAP_ENV}={cap:g} must be between 0 and this GPU's {total:.1f} GiB", CAP_ENV)
    from core.hardware.estimate import load_coefficients

    # A real card of that size also holds this process's CUDA context outside the allocator.
    context = load_coefficients().get("cuda_context_gib")
    torch.cuda.set_per_process_memory_fraction(max(cap - context, 0.5) / total, dev)
    return cap


def card_gib(device: str) -> tuple[float | None, str]:
    """Memory this run may use on its card, and where the figure comes from: the card's size (the
    emulated size under QWENTUNE_GPU_MEMORY_GIB), less what other processes hold now (a chat model
    on the same GPU), this process's own CUDA context counted back in since the estimate has it."""
    if device != "cuda":
        return None, "no CUDA GPU"
    cap = apply_memory_cap()
    import torch

    from core.hardware.estimate import load_coefficients

    dev = torch.cuda.current_device()
    free, total = (x / GIB for x in torch.cuda.mem_get_info(dev))
    card = cap if cap is not None else total
    # What this process already holds (a model loaded before the choice) is in the estimate too.
    own = load_coefficients().get("cuda_context_gib") + torch.cuda.memory_reserved(dev) / GIB
    usable = min(card, free + own)
    name = torch.cuda.get_device_name(dev)
    where = f"{name}, {card:.1f} GiB" + (" (emulated)" if cap is not None else "")
    if usable < card - 0.5:
        where += f", {usable:.1f} GiB of it free"
    return usable, where


def stage_options(cfg, world_size: int = 1) -> dict:
    """choose_micro_batch's stage and card arguments for a RunConfig: train.stage, the rl section,
    train.strategy and the number of cards (``world_size``, the processes of a ddp / fsdp run)."""
    t = cfg.train
    strategy = getattr(t, "strategy", "single")
    rl = getattr(cfg, "rl", None)
    return {"stage": getattr(t, "stage", "sft"), "rl": rl,
            "precompute_ref": bool(getattr(rl, "precompute_ref", False)), "strategy": strategy,
            "gpus": max(int(world_size), 1) if strategy != "single" else 1}


def share_rows(grad_accum: int, world_size: int) -> tuple[int, str]:
    """micro_batch auto on ``world_size`` processes (ddp / fsdp): the rows each process trains per
    optimizer step, keeping the effective batch (REFERENCE_MICRO_BATCH x grad_accum) where it
    divides over the processes, and the sentence that says what happened."""
    total = effective_batch(grad_accum)
    if world_size <= 1:
        return total, ""
    if total % world_size == 0:
        return total // world_size, (f"{total} rows per step shared by {world_size} processes: "
                                     f"{total // world_size} each")
    return total, (f"{total} rows per step do not divide over {world_size} processes, so each trains {total} "
                   f"and the effective batch is {total * world_size} rows (a grad_accum that makes "
                   f"{REFERENCE_MICRO_BATCH} x grad_accum a multiple of {world_size} keeps it)")


def resolve(cfg, run_dir, model_path, backend: str, echo=print, world_size: int = 1) -> Choice | None:
    """Settle ``cfg.train.micro_batch`` (and ``grad_accum``) before the model loads (so a memory
    cap holds for loading too), and say what was chosen and why in the log and status.json.
    Returns the choice for auto, None for a fixed micro-batch. ``world_size``: processes of a
    ddp / fsdp run; each is fitted to its own card, and the effective batch counts them all
    (micro_batch x grad_accum x world_size)."""
    from core.train import runs
    from core.train.backends import cuda_available

    t = cfg.train
    device = "cuda" if cuda_available() else "cpu"
    if not is_auto(t.micro_batch):
        if device == "cuda":
            apply_memory_cap()
        runs.write_status(run_dir, micro_batch=t.micro_batch, grad_accum=t.grad_accum,
                          effective_batch=t.micro_batch * t.grad_accum * world_size, micro_batch_reason=None)
        return None
    rows, shared = share_rows(t.grad_accum, world_size)
    optimizer = t.optimizer
    if optimizer == "auto":
        optimizer = "adamw_8bit" if device == "cuda" else "adamw_torch"
    try:
        vram, where = card_gib(device)
        choice = choose_micro_batch(str(model_path), vram_gib=vram, grad_accum=t.grad_accum,
                                    method=cfg.model.method, seq_len=t.max_seq_len, rank=cfg.lora.r,
                                    target_modules=cfg.lora.target_modules, grad_ckpt=t.gradient_checkpointing,
                                    backend=backend if backend in ("unsloth", "peft") else "peft",
                                    quant=cfg.model.quant, optimizer=optimizer,
                                    rows=rows if world_size > 1 else None, **stage_options(cfg, world_size))
    except (KeyError, ValueError, OSError) as exc:
        if isinstance(exc, ConfigError) and exc.where.startswith(("train.", CAP_ENV)):
            raise
        m = max(divisors_up_to(rows, REFERENCE_MICRO_BATCH))
        choice = Choice(m, rows // m, rows,
                        f"micro-batch auto: no memory estimate for this model ({exc}), so "
                        f"{m} x {rows // m} accumulation = {rows} rows per step")
    t.micro_batch, t.grad_accum = choice.micro_batch, choice.grad_accum
    if device == "cuda" and choice.est_gib is not None:
        choice = replace(choice, reason=f"{choice.reason} ({where})")
    if shared:
        choice = replace(choice, reason=f"{choice.reason}; {shared}",
                         effective_batch=choice.effective_batch * world_size)
    echo(choice.reason)
    runs.write_status(run_dir, micro_batch=choice.micro_batch, grad_accum=choice.grad_accum,
                      effective_batch=choice.effective_batch, micro_batch_reason=choice.reason,
                      micro_batch_est_gib=choice.est_gib, micro_batch_budget_gib=choice.budget_gib)
    return choice
