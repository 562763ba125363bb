"""Checks of a run's settings against each other, the data and the card, before anything starts.

Each field is already checked on its own when the config is read (types, choices, bounds: see
core.settings). What only shows when settings meet - no step to train, a warmup longer than the run,
a sequence longer than the model's context, a micro-batch the card cannot hold - is checked here.
Every rule runs and every problem is collected, so the user fixes them all in one go instead of
meeting them one per start (torchtune's config validation does the same).

An error is a setting the run cannot train with (nothing to train, no learning rate, rows longer
than the model can attend to, an accumulation no recipe uses); the run does not start. A warning is
a setting it trains with, though probably not as meant (a warmup the run never finishes, one step
bigger than the whole mix, a micro-batch the card will not hold): the run starts and the user is
told, with the numbers - a 2-step smoke test of a preset is a fine thing to run. The GUI shows the list in
the Train tab before it starts a run; ``python -m core train`` prints it and exits.

``Problem.code`` + ``params`` let the GUI show the text in the page's language; ``message`` is the
English text (CLI, log).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import ConfigError

# Above this many micro-batches per optimizer step, a step takes so long that the run looks hung and
# the loss curve has a handful of points; nobody means it (Unsloth's recipe uses 4).
GRAD_ACCUM_MAX = 256
AUTO_ROWS_PER_ACCUM = 2  # micro_batch "auto": the effective batch stays 2 x grad_accum rows


@dataclass(frozen=True)
class Problem:
    setting: str  # dotted RunConfig path, e.g. "train.warmup_steps"
    code: str  # stable id (GUI strings: train.check.<code>)
    message: str  # English, names the setting and the numbers
    level: str = "error"  # error: the run does not start | warning: it starts, the user is told
    params: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


class SettingsProblems(ConfigError):
    """Raised with every error found (``problems``); the message lists them one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = [f"  - {p}" for p in self.problems]
        super().__init__(f"{len(self.problems)} setting(s) must change before the run can start:\n"
                         + "\n".join(lines))


@dataclass(frozen=True)
class Card:
    """The GPU a run would use, for the memory check."""

    name: str
    total_gib: float


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "warning"]


# ---------------------------------------------------------------------------------- facts
def model_context(name_or_path: str) -> int | None:
    """The model's context length in tokens: a model folder's config.json, else the catalog (key or
    hub id). None when it cannot be known offline (a hub id not downloaded, the demo model)."""
    from core.demo import is_demo

    text = (name_or_path or "").strip()
    if not text or is_demo(text):
        return None
    folder = Path(text).expanduser()
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # the model check reports a broken folder with its own message
        config = config.get("text_config", config) if "max_position_embeddings" not in config else config
        value = config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) and value > 0 else None
    try:
        from core.hardware.catalog import load_catalog
        from core.hardware.estimate import catalog_entry_for_repo

        entry = load_catalog().get(text.lower()) or catalog_entry_for_repo(text)
    except (ConfigError, OSError, ValueError):
        return None
    return entry.context_len if entry else None


def _manifest(mix_dir: str) -> dict | None:
    """A saved mix's manifest, or None when there is no readable one (reading the mix later reports
    why, naming the file)."""
    if not mix_dir:
        return None
    try:
        manifest = json.loads((Path(mix_dir).expanduser() / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def mix_rows(mix_dir: str) -> int | None:
    """Training rows of a saved mix (its manifest), or None when there is no readable manifest."""
    rows = (_manifest(mix_dir) or {}).get("train_rows")
    return rows if isinstance(rows, int) and rows >= 0 else None


def fixed_micro_batch(cfg) -> int | None:
    """The micro-batch the settings name, or None when the trainer chooses it ("auto")."""
    mb = cfg.train.micro_batch
    return mb if isinstance(mb, int) and not isinstance(mb, bool) else None


def rows_per_step(cfg) -> int:
    """Rows one optimizer step takes. With micro_batch auto the trainer keeps the effective batch at
    AUTO_ROWS_PER_ACCUM x grad_accum rows, whatever micro-batch it picks."""
    return (fixed_micro_batch(cfg) or AUTO_ROWS_PER_ACCUM) * cfg.train.grad_accum


def total_steps(cfg, train_rows: int | None) -> int | None:
    """Optimizer steps the run will take: max_steps, else epochs over the rows (None: unknown)."""
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps
    if train_rows is None:
        return None
    per_epoch = math.ceil(train_rows / rows_per_step(cfg)) if train_rows else 0
    return math.ceil(per_epoch * t.epochs)


def _estimate(cfg, micro_batch: int) -> float:
    """Per-card peak of ``cfg`` at ``micro_batch``: stage, rl settings, strategy and cards included."""
    from core.hardware.estimate import estimate_run

    return estimate_run(cfg, micro_batch=micro_batch).total_gib


# ---------------------------------------------------------------------------------- the rules
def check_run(cfg, *, train_rows: int | None = None, card: Card | None = None) -> list[Problem]:
    """Every problem of ``cfg`` (a RunConfig), errors first. ``train_rows``: rows of the training
    data (default: read from the mix folder's manifest). ``card``: the GPU to check the micro-batch
    against (None: no memory check, e.g. on the CPU)."""
    t = cfg.train
    if train_rows is None:
        train_rows = mix_rows(cfg.data.mix_dir)
    out: list[Problem] = []

    if t.learning_rate <= 0:
        out.append(Problem("train.learning_rate", "lr_not_positive",
                           f"must be above 0 (got {t.learning_rate:g}): with it the weights never change",
                           params={"lr": f"{t.learning_rate:g}"}))
    if t.epochs <= 0 and t.max_steps <= 0:
        out.append(Problem("train.epochs", "nothing_to_train",
                           "0 epochs with train.max_steps 0 trains nothing: set train.epochs above 0 "
                           "or train.max_steps to the number of steps"))
    context = model_context(cfg.model.name_or_path)
    if context is not None and t.max_seq_len > context:
        out.append(Problem("train.max_seq_len", "longer_than_context",
                           f"{t.max_seq_len} is longer than {cfg.model.name_or_path}'s context of {context} "
                           f"tokens; use at most {context}",
                           params={"max_len": t.max_seq_len, "model": cfg.model.name_or_path, "context": context}))
    if t.grad_accum > GRAD_ACCUM_MAX:
        out.append(Problem("train.grad_accum", "grad_accum_too_large",
                           f"{t.grad_accum} micro-batches per optimizer step is far beyond any recipe (at most "
                           f"{GRAD_ACCUM_MAX}; Unsloth's uses 4): each step would take minutes and the loss "
                           "curve would have a handful of points",
                           params={"n": t.grad_accum, "max": GRAD_ACCUM_MAX}))
    elif train_rows is not None and 0 < train_rows < rows_per_step(cfg):
        out.append(Problem("train.grad_accum", "step_bigger_than_data",
                           f"one optimizer step takes train.micro_batch x train.grad_accum = "
                           f"{rows_per_step(cfg)} rows, but the mix has {train_rows} training rows; "
                           "lower train.grad_accum",
                           level="warning", params={"rows_per_step": rows_per_step(cfg), "rows": train_rows}))
    steps = total_steps(cfg, train_rows)
    if steps is not None and steps > 0 and t.warmup_steps >= steps:
        suggest = max(1, steps // 10) if steps > 1 else 0  # about a tenth of the run, at least a step
        out.append(Problem("train.warmup_steps", "warmup_too_long",
                           f"{t.warmup_steps} warmup steps but the run has only {steps} steps: the learning "
                           f"rate never reaches train.learning_rate; use fewer than {steps} (about "
                           f"{suggest} is common)",
                           level="warning",
                           params={"warmup": t.warmup_steps, "steps": steps, "suggest": suggest}))
    if card is not None and fixed_micro_batch(cfg) is not None:  # "auto" picks what fits itself
        out += _memory(cfg, card)
    out += stage_problems(cfg)
    out += check_strategy(cfg)
    return sorted(out, key=lambda p: p.level != "error")


def mix_kind(mix_dir: str) -> str | None:
    """The kind of rows a saved mix holds (manifest "kind": sft, preference or prompt; absent = sft),
    or None when there is no readable manifest."""
    manifest = _manifest(mix_dir)
    if manifest is None:
        return None
    from core.data.mixdir import mix_kind as manifest_kind

    try:
        return manifest_kind(manifest)
    except ConfigError:
        return None  # an unknown kind: reading the mix reports it, naming the file


def world_size(cfg) -> int:
    """GPUs the run trains on when the settings say (a count or a list of ids); 1 otherwise."""
    t = cfg.train
    if t.strategy == "single":
        return 1
    gpus = str(t.gpus).strip()
    if gpus.isdigit():
        return max(1, int(gpus))
    if "," in gpus:
        return len([g for g in gpus.split(",") if g.strip()])
    return 1


def stage_problems(cfg, kind: str | None = None) -> list[Problem]:
    """What train.stage needs from the rest: rows of its kind (``kind``: the mix's kind, read
    from data.mix_dir's manifest when not given), GRPO's rewards and a generation batch of whole
    groups, prompts and completions that fit."""
    from core.choices import STAGE_MIX_KIND
    from core.train.stages import grpo_micro_batch

    t, rl = cfg.train, cfg.rl
    stage = t.stage
    out: list[Problem] = []
    kind = kind or mix_kind(cfg.data.mix_dir)
    want = STAGE_MIX_KIND.get(stage, "sft")
    if kind is not None and kind != want:
        where = f"data.mix_dir ({cfg.data.mix_dir})" if cfg.data.mix_dir else "data.mix"
        if stage == "sft" and kind == "preference":
            out.append(Problem("train.stage", "stage_sft_on_preference",
                               f"sft on the preference mix in {where} trains on the chosen replies only; "
                               "train.stage dpo or orpo uses the rejected ones too",
                               level="warning", params={"mix": cfg.data.mix_dir}))
        else:
            out.append(Problem("train.stage", "stage_mix_kind",
                               f"train.stage {stage} trains on {want} rows, but the mix in {where} holds {kind} "
                               f"rows; choose a {want} mix in data.mix_dir, or the train.stage for {kind} rows "
                               f"({_stage_for(kind)})",
                               params={"stage": stage, "want": want, "kind": kind, "mix": cfg.data.mix_dir,
                                       "suggest": _stage_for(kind)}))
    if stage in ("dpo", "orpo") and rl.max_prompt_len >= t.max_seq_len:
        out.append(Problem("rl.max_prompt_len", "prompt_longer_than_sequence",
                           f"{rl.max_prompt_len} leaves no room for the replies in train.max_seq_len "
                           f"{t.max_seq_len} (prompt + the longer reply must fit); lower rl.max_prompt_len",
                           level="warning", params={"prompt": rl.max_prompt_len, "max_len": t.max_seq_len}))
    if stage != "grpo":
        return out
    if not rl.rewards and not rl.reward_file:
        out.append(Problem("rl.rewards", "grpo_no_reward",
                           "grpo needs at least one reward: choose rl.rewards (answer, format, length) or give "
                           "rl.reward_file"))
    if rl.reward_file and not Path(rl.reward_file).expanduser().is_file():
        out.append(Problem("rl.reward_file", "reward_file_missing",
                           f"{rl.reward_file} is not a file; give the path of a Python file with your reward "
                           "function(s), or leave rl.reward_file empty",
                           params={"path": rl.reward_file}))
    mb = fixed_micro_batch(cfg)
    world = world_size(cfg)
    group = rl.num_generations
    if mb is not None and (mb * t.grad_accum * world) % group:
        fits = grpo_micro_batch(mb, t.grad_accum, group, world)
        gpus = f" x {world} GPUs" if world > 1 else ""
        out.append(Problem("train.micro_batch", "grpo_batch_split",
                           f"grpo generates train.micro_batch x train.grad_accum{gpus} = {mb * t.grad_accum * world} "
                           f"completions per step, which must be whole groups of rl.num_generations = {group}; "
                           f"use train.micro_batch {fits}, or a train.grad_accum that makes a multiple of {group}",
                           params={"mb": mb, "accum": t.grad_accum, "world": world, "total": mb * t.grad_accum * world,
                                   "group": group, "fits": fits}))
    context = model_context(cfg.model.name_or_path)
    if context is not None and rl.max_prompt_len + rl.max_completion_len > context:
        out.append(Problem("rl.max_completion_len", "grpo_longer_than_context",
                           f"rl.max_prompt_len {rl.max_prompt_len} + rl.max_completion_len {rl.max_completion_len} "
                           f"is longer than {cfg.model.name_or_path}'s context of {context} tokens",
                           params={"prompt": rl.max_prompt_len, "completion": rl.max_completion_len,
                                   "model": cfg.model.name_or_path, "context": context}))
    if rl.rollout == "vllm":
        from core.train.backends import has_package

        if not has_package("vllm"):
            out.append(Problem("rl.rollout", "rollout_no_vllm",
                               "vllm needs the vllm package (pip install vllm); use rl.rollout auto"))
    if rl.rollout == "unsloth" and cfg.model.backend == "peft":
        out.append(Problem("rl.rollout", "rollout_no_unsloth",
                           "rl.rollout unsloth decodes with Unsloth's graphs, but model.backend is peft; "
                           "use rl.rollout auto (the chat engine on this backend)"))
    return out


def _stage_for(kind: str) -> str:
    return {"sft": "sft", "preference": "dpo or orpo", "prompt": "grpo"}.get(kind, "sft")


# bitsandbytes stores 4-bit weights in another dtype (bnb_4bit_quant_storage) from this version on;
# FSDP can only shard the packed weights when they are stored as the compute dtype.
BNB_QUANT_STORAGE = (0, 43, 0)


def _version(text: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def check_strategy(cfg, bnb_version: str | None = None) -> list[Problem]:
    """What train.strategy allows (ddp / fsdp): fsdp shards on transformers + PEFT, so it refuses
    model.backend unsloth, and QLoRA only where bitsandbytes can store 4-bit weights as the compute
    dtype. ``bnb_version``: the installed bitsandbytes (default: looked up; "" = not installed)."""
    t, m = cfg.train, cfg.model
    out: list[Problem] = []
    if t.strategy != "fsdp":
        return out
    if m.backend == "unsloth":
        out.append(Problem("model.backend", "fsdp_needs_peft",
                           "fsdp shards the model on the transformers + PEFT backend; Unsloth trains a whole "
                           "copy per GPU: use train.strategy ddp with Unsloth, or model.backend auto / peft"))
    if m.method == "qlora":
        if bnb_version is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                bnb_version = version("bitsandbytes")
            except PackageNotFoundError:
                bnb_version = ""
        need = ".".join(map(str, BNB_QUANT_STORAGE))
        if bnb_version and _version(bnb_version) < BNB_QUANT_STORAGE:
            out.append(Problem("model.method", "fsdp_qlora_old_bnb",
                               f"QLoRA with fsdp needs bitsandbytes {need} or newer (its 4-bit weights stored "
                               f"as the compute dtype, which FSDP can shard); {bnb_version} is installed: "
                               f"pip install -U bitsandbytes, or use train.strategy ddp",
                               params={"need": need, "have": bnb_version}))
    return out


def _memory(cfg, card: Card) -> list[Problem]:
    from core.hardware.estimate import HEADROOM

    budget = card.total_gib * (1 - HEADROOM)
    mb = cfg.train.micro_batch
    try:
        need = _estimate(cfg, mb)
    except (ConfigError, KeyError, ValueError, OSError):
        return []  # a model whose shape is not known offline: no estimate, no warning
    if need <= budget:
        return []
    fits = 0
    for smaller in range(mb - 1, 0, -1):
        if _estimate(cfg, smaller) <= budget:
            fits = smaller
            break
    if fits:
        advice = f"train.micro_batch {fits} fits (about {_estimate(cfg, fits):.1f} GiB)"
    else:
        advice = "even 1 does not fit: use QLoRA, a shorter train.max_seq_len or a smaller model"
    return [Problem("train.micro_batch", "micro_batch_over_card" if fits else "micro_batch_none_fits",
                    f"{mb} needs about {need:.1f} GiB by the estimate, more than {card.name} holds "
                    f"({card.total_gib:.0f} GiB, {budget:.1f} GiB usable); {advice}",
                    level="warning",
                    params={"mb": mb, "need": f"{need:.1f}", "card": card.name, "total": f"{card.total_gib:.0f}",
                            **({"fits": fits, "fits_need": f"{_estimate(cfg, fits):.1f}"} if fits else {})})]


def detected_card(cfg=None) -> Card | None:
    """The GPU to check the memory against, or None (no GPU). With ``cfg``: the smallest of the
    cards its train.gpus / train.strategy take (every card of a ddp / fsdp run must hold its share);
    otherwise, or when the settings name no card this machine has, the first one NVML reports."""
    from core.hardware.detect import detect

    gpus = detect().gpus
    if not gpus:
        return None
    chosen = gpus[:1]
    if cfg is not None:
        from core.train.launch import plan

        try:
            ids = plan(cfg, available=len(gpus)).gpus
        except ConfigError:  # train.gpus names cards this machine lacks: the launch refuses it
            ids = ()
        chosen = [gpus[i] for i in ids if 0 <= i < len(gpus)] or chosen
    card = min(chosen, key=lambda g: g.total_gib)
    return Card(card.name, card.total_gib)


def raise_for_errors(problems: list[Problem]) -> None:
    bad = errors(problems)
    if bad:
        raise SettingsProblems(bad)
