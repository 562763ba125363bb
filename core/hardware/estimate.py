"""Peak VRAM of LoRA / QLoRA training and of inference, from the model's shape. Pure arithmetic.

The training estimate is a physically-motivated sum; each term is a count that follows from the
architecture and the setup (parameters, tokens x hidden units, tokens x vocabulary entries, ...)
times a coefficient in bytes per unit. The coefficients live in one place,
``core/hardware/vram_coefficients.json``; :func:`calibrate` refits them by least squares on GPU
measurements (``bench/results/vram.jsonl``, written by ``bench/vram_sweep.py``; refit with
``python -m bench.fit_vram --write``).

    weights      linear projections (bf16, or nf4 + quantization state for QLoRA; Unsloth's
                 dynamic 4-bit keeps a few in bf16) + embeddings / LM head / norms
                 (embed_bytes_*: 2 for bf16, 4 where PEFT's k-bit preparation upcasts them)
    lora         adapter parameters + gradients + optimizer states (fp32 master copies) x the
                 share of them alive at the peak (adapter_peak_share per backend)
    activations  per-layer checkpoints kept on the GPU (ckpt_bytes per token per layer per hidden
                 unit; ~0 when Unsloth offloads them to CPU RAM) + the activations of the layer
                 being recomputed (layer_scale x its saved tensors in bf16, LoRA's rank-wide
                 intermediates included; every layer with checkpointing off) + attention tensors
                 that grow with the square of the row length (attn_pair_bytes per query x key pair)
    logits       tokens x vocabulary x logits_bytes, fitted per backend: on the measured points it
                 comes out far below the 2-4 bytes of a whole logits tensor (Unsloth chunks its loss;
                 both backends' peaks fall where the full logits are not alive)
    overhead     dequantized-weight buffers (QLoRA), allocator/workspace constant, the caching
                 allocator's slack (reserve_frac of the whole, plus transient_reserve_frac per
                 backend of what each step allocates and frees: activations and logits) and the
                 CUDA context (cuda_context_gib)

``Estimate.alloc_gib`` is comparable with ``torch.cuda.max_memory_allocated``; ``total_gib`` adds the
allocator slack and the CUDA context, which is what nvidia-smi shows and what must fit on the card.

Several cards (``strategy``, ``gpus``): every figure is per card. ddp keeps a whole copy of the model
on each card, so its figure is one card's at the micro-batch per card. fsdp (transformers + PEFT:
Unsloth does not shard) divides the weights and the adapter's parameters, gradients and optimizer
states by the number of cards and adds what FSDP gathers back: the root module (embedding, LM head,
final norm), kept whole from the forward to the backward, and ``gather_layers`` decoder layers
unsharded at a time (the one computing and the one prefetched), plus the collectives' buffers.

Stages beyond SFT (``stage``, ``rl``) run as phases one after another; the peak is the largest:

    step        the training forward + backward. dpo / orpo: each row is a chosen + rejected pair,
                2 sequences of up to seq_len tokens; grpo: micro_batch completions (prompt +
                completion), logits only for the completion tokens. TRL computes the log-probs
                from materialised logits (stage_logits_bytes per backend: Unsloth's patched
                trainers may chunk them), not through the backend's SFT loss.
                dpo without precomputed reference log-probs also runs the reference forward here
                (adapter disabled, no copy of the model) while the policy's tensors are alive.
    generation  grpo: the rollouts' KV cache (generation_batch completions of prompt + completion
                tokens), the prompt prefill of one layer and the sampling logits.
    reference   a no-gradient log-prob pass on its own: dpo with precomputed reference log-probs
                (before training), grpo with rl.kl_beta > 0 (after the rollouts).
The stage terms are physical counts whose coefficients (``stages`` and each backend's
``stage_logits_bytes`` in the coefficients file) are fit to the points ``bench/vram_sweep.py --stage``
measures; GRPO's rest on few points (docs/hardware.md gives their errors).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from core.choices import METHODS, QUANTS, STAGES, STRATEGIES
from core.config import ALL_LINEAR
from core.hardware.catalog import Arch, ModelEntry, get_model, lora_param_count, param_counts
from core.settings import ConfigError

GIB = float(1 << 30)
# Share of a card kept free when deciding what fits (allocator fragmentation, the CUDA context,
# other processes): used by the recommendations, the auto micro-batch and the pre-run checks.
HEADROOM = 0.10
COEFFS_PATH = Path(__file__).with_name("vram_coefficients.json")
GRAD_CKPT = ("unsloth", "on", "off")
BACKENDS = ("unsloth", "peft")
OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "adamw_torch")
CATEGORIES = ("weights", "lora", "activations", "logits", "overhead")
# Parts only the stages beyond SFT have (in a breakdown only when they do).
STAGE_CATEGORIES = ("reference", "generation")


# --------------------------------------------------------------------------------- coefficients
@dataclass(frozen=True)
class Coefficients:
    """The named coefficients (a nested mapping, as stored in vram_coefficients.json)."""

    data: dict

    def get(self, path: str) -> float:
        node = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"coefficient {path!r} is missing from {COEFFS_PATH.name}")
            node = node[part]
        return float(node)

    def has(self, path: str) -> bool:
        try:
            self.get(path)
        except KeyError:
            return False
        return True

    def with_values(self, values: dict[str, float], **meta) -> Coefficients:
        data = json.loads(json.dumps(self.data))
        for path, value in values.items():
            node = data
            *parents, last = path.split(".")
            for part in parents:
                node = node[part]
            node[last] = round(float(value), 6)
        data.update(meta)
        return Coefficients(data)

    def dumps(self) -> str:
        return json.dumps(self.data, indent=2) + "\n"


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Coefficients:
    try:
        return Coefficients(json.loads(Path(path).read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON ({exc.msg})", "", f"{path}:{exc.lineno}") from None


def load_coefficients(path: str | Path | None = None) -> Coefficients:
    p = Path(path) if path else COEFFS_PATH
    if not p.exists():
        raise ConfigError("VRAM coefficients file not found", "", str(p))
    return _load(str(p), p.stat().st_mtime)


# -------------------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class TrainSetup:
    method: str
    seq_len: int
    micro_batch: int
    rank: int = 16
    target_modules: tuple[str, ...] = tuple(ALL_LINEAR)
    grad_ckpt: str = "unsloth"
    backend: str = "unsloth"
    quant: str = "auto"
    optimizer: str = "adamw_8bit"
    stage: str = "sft"
    strategy: str = "single"
    world_size: int = 1  # cards of a ddp / fsdp run (1 for single)
    # grpo: prompt + completion tokens of one sequence, completions per prompt, completions decoded
    # at once per card (0: micro_batch) and whether a reference pass runs (rl.kl_beta > 0)
    prompt_len: int = 512
    completion_len: int = 1024
    num_generations: int = 4
    generation_batch: int = 0
    kl: bool = False
    precompute_ref: bool = False  # dpo: TRL's precompute_ref_log_probs

    @property
    def sequences(self) -> int:
        """Sequences of one micro-batch in the training forward: a dpo / orpo row is two."""
        return 2 * self.micro_batch if self.stage in ("dpo", "orpo") else self.micro_batch

    @property
    def row_len(self) -> int:
        """Tokens of one sequence: prompt + completion for grpo, else seq_len."""
        return self.prompt_len + self.completion_len if self.stage == "grpo" else self.seq_len

    @property
    def tokens(self) -> int:
        return self.row_len * self.sequences

    @property
    def logit_tokens(self) -> int:
        """Positions whose logits the loss needs: grpo keeps only the completion's."""
        return self.sequences * (self.completion_len if self.stage == "grpo" else self.row_len)

    @property
    def shards(self) -> int:
        return self.world_size if self.strategy == "fsdp" else 1

    @property
    def train_backend(self) -> str:
        # FSDP shards through transformers + PEFT; Unsloth's patched model does not shard.
        return "peft" if self.strategy == "fsdp" else self.backend

    @property
    def ckpt_mode(self) -> str:
        # Offloaded checkpointing is Unsloth's; the PEFT backend falls back to standard recompute.
        return "on" if self.train_backend == "peft" and self.grad_ckpt == "unsloth" else self.grad_ckpt

    def resolved_quant(self, arch: Arch) -> str:
        if self.method != "qlora":
            return "none"
        if self.quant != "auto":
            return self.quant
        return "dynamic4" if self.train_backend == "unsloth" and not arch.is_moe else "bnb4"


def _check(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"must be one of {list(choices)}, got {value!r}", name)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a whole number >= 1, got {value!r}", name)
    return value


def resolve_arch(model: str | Arch | ModelEntry) -> Arch:
    """An Arch from an Arch, a catalog entry, a catalog key, a hub id of a catalog model (e.g.
    Qwen/Qwen3-8B or unsloth/Qwen3-8B-unsloth-bnb-4bit), a local model folder, or 'demo'."""
    if isinstance(model, Arch):
        return model
    if isinstance(model, ModelEntry):
        return model.arch
    if isinstance(model, str):
        folder = Path(model).expanduser()
        if (folder / "config.json").is_file():
            try:
                config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"invalid JSON ({exc.msg})", "", f"{folder / 'config.json'}:{exc.lineno}") from None
            return Arch.from_hf_config(config)
        from core.demo import ensure_demo_model, is_demo

        if is_demo(model):
            return resolve_arch(str(ensure_demo_model()))
        entry = catalog_entry_for_repo(model)
        return entry.arch if entry else get_model(model).arch
    raise TypeError(f"expected a catalog key, model folder, Arch or ModelEntry, got {type(model).__name__}")


def catalog_entry_for_repo(repo: str) -> ModelEntry | None:
    """The catalog model one of whose Hugging Face or ModelScope ids is ``repo`` (any letter case)."""
    from core.hardware.catalog import load_catalog

    wanted = repo.strip().lower()
    for entry in load_catalog().values():
        for ids in (entry.hf, entry.modelscope):
            if any(r and r.lower() == wanted for r in ids.values()):
                return entry
    return None


# ---------------------------------------------------------------------------------- the terms
@dataclass(frozen=True)
class Term:
    """``coef`` (a coefficient path, or None for a fixed term) x ``units`` bytes-per-unit counts.
    ``phase``: shared (held through every phase: weights, adapter, buffers) or the phase it belongs
    to (step, generation, reference; see the module docstring)."""

    category: str
    coef: str | None
    units: float  # for coef=None: bytes
    phase: str = "shared"


def training_terms(arch: Arch, s: TrainSetup, c: Coefficients) -> list[Term]:
    """Every term of every phase (see :func:`phase_terms` for the ones of one phase)."""
    b = f"backends.{s.train_backend}"
    act = f"{b}.activations.{s.ckpt_mode}"
    counts = param_counts(arch)
    shards = s.shards
    terms: list[Term] = []
    # weights (fsdp: each card stores 1/N of them)
    if s.method == "lora":
        linear_bytes = 2.0
        embed_coef = f"{b}.embed_bytes_lora"
    else:
        nf4 = c.get("nf4_bytes_per_param")
        kept16 = c.get("dynamic4_extra_frac") if s.resolved_quant(arch) == "dynamic4" else 0.0
        linear_bytes = nf4 + kept16 * (2.0 - nf4)
        embed_coef = f"{b}.embed_bytes_qlora"
    terms.append(Term("weights", None, counts.linear * linear_bytes / shards))
    terms.append(Term("weights", embed_coef, (counts.embed + counts.other) / shards))
    if s.strategy == "fsdp":
        # What FSDP gathers back: the root module (embedding, LM head, final norm) stays whole from
        # the forward through the backward; decoder layers are gathered a few at a time.
        f = "strategies.fsdp"
        terms.append(Term("weights", f"{f}.root_gather_bytes", counts.embed + counts.other))
        terms.append(Term("weights", f"{f}.gather_layers", counts.linear / arch.layers * linear_bytes))
        terms.append(Term("overhead", f"{f}.comm_gib", GIB))
    # adapter: fp32 parameters + fp32 gradients + optimizer states (fsdp: sharded like the weights),
    # times the share of them alive at the backend's peak, which can come before most gradients and
    # optimizer states exist (fitted: ranks 64 / 128 decide it)
    n_lora = lora_param_count(arch, s.rank, s.target_modules)
    terms.append(Term("lora", f"{b}.adapter_peak_share",
                      n_lora * c.get(f"lora_state_bytes.{s.optimizer}") / shards))
    # activations of the training step
    tokens = s.tokens
    terms.append(Term("activations", f"{act}.ckpt_bytes", arch.layers * tokens * arch.hidden, "step"))
    layer_bytes = tokens * layer_activation_elems(arch, s.rank, len(s.target_modules)) * 2.0
    if s.ckpt_mode == "off":
        layer_bytes *= arch.layers
    terms.append(Term("activations", f"{act}.layer_scale", layer_bytes, "step"))
    # Attention that materialises a (query x key) tensor per row for one layer at a time: a 4-D
    # mask, or scores where the kernel falls back to plain matmuls. Zero where fused kernels only
    # keep per-token statistics; long rows (8k-32k tokens) decide the coefficient.
    terms.append(Term("activations", f"{b}.attn_pair_bytes", float(s.sequences) * s.row_len * s.row_len, "step"))
    # logits / loss: SFT through the backend's loss; the other stages' log-probs come from TRL,
    # which materialises the logits of every position it scores.
    logits_coef = f"{b}.logits_bytes" if s.stage == "sft" else f"{b}.stage_logits_bytes"
    terms.append(Term("logits", logits_coef, s.logit_tokens * arch.vocab, "step"))
    terms += _stage_terms(arch, s)
    # runtime buffers
    if s.method == "qlora":
        terms.append(Term("overhead", f"{b}.dequant_copies", largest_linear(arch) * 2.0))
    terms.append(Term("overhead", f"{b}.overhead_gib", GIB))
    return terms


def _no_grad_pass(arch: Arch, sequences: int, row_len: int, logit_len: int, phase: str) -> list[Term]:
    """A forward without gradients (a reference log-prob pass): one layer's transient tensors at a
    time and the logits of the positions scored."""
    return [Term("reference", "stages.ref_logits_bytes", sequences * logit_len * arch.vocab, phase),
            Term("reference", None, sequences * row_len * forward_width(arch) * 2.0, phase)]


def _stage_terms(arch: Arch, s: TrainSetup) -> list[Term]:
    terms: list[Term] = []
    if s.stage == "dpo":
        # The reference is the model with the adapter disabled (no copy). Computed inside the step,
        # its logits come on top of the policy's; precomputed, it is a pass of its own before training.
        terms += _no_grad_pass(arch, s.sequences, s.row_len, s.row_len,
                               "reference" if s.precompute_ref else "step")
    elif s.stage == "grpo":
        rows = s.generation_batch or s.micro_batch
        prompt = s.prompt_len
        terms.append(Term("generation", "stages.kv_bytes",
                          2.0 * arch.layers * arch.kv_dim * rows * (prompt + s.completion_len), "generation"))
        # The prefill of one layer for every prompt, and the sampling's fp32 logits (+ softmax).
        terms.append(Term("generation", None, rows * prompt * forward_width(arch) * 2.0, "generation"))
        terms.append(Term("generation", None, rows * arch.vocab * 4.0 * 2, "generation"))
        if s.kl:
            # Reference log-probs (adapter disabled) in chunks of micro_batch completions, after the
            # rollouts and before the step.
            terms += _no_grad_pass(arch, s.micro_batch, s.row_len, s.completion_len, "reference")
    return terms


def phase_terms(arch: Arch, s: TrainSetup, c: Coefficients, phase: str) -> list[Term]:
    """The terms held during ``phase``: the shared ones and the phase's own."""
    return [t for t in training_terms(arch, s, c) if t.phase in ("shared", phase)]


def phases_of(s: TrainSetup) -> tuple[str, ...]:
    if s.stage == "grpo":
        return ("step", "generation", "reference") if s.kl else ("step", "generation")
    if s.stage == "dpo" and s.precompute_ref:
        return ("step", "reference")
    return ("step",)


def forward_width(arch: Arch) -> int:
    """Elements per token one decoder layer's forward holds at once without gradients (q/k/v, the
    SwiGLU intermediates, residuals)."""
    return arch.q_dim + 2 * arch.kv_dim + 3 * arch.active_intermediate + 2 * arch.hidden


def layer_activation_elems(arch: Arch, rank: int = 0, n_targets: int = 0) -> int:
    """Elements one decoder layer saves for backward per token (bf16), counted from Qwen3's
    forward: norms and residuals, q/k/v before and after q/k-norm and RoPE, the attention output,
    the SwiGLU gate, up, activation and product (router probabilities for MoE), and per adapted
    projection LoRA's rank-wide intermediate x @ A, which the B gradient needs."""
    elems = 5 * arch.hidden + 3 * arch.q_dim + 5 * arch.kv_dim + 4 * arch.active_intermediate
    if arch.is_moe:
        elems += 2 * arch.experts
    return elems + rank * n_targets


def largest_linear(arch: Arch) -> int:
    """Elements of the largest weight QLoRA dequantizes at once (a projection, or for MoE one
    layer's expert block, which grouped-expert kernels dequantize together)."""
    if arch.is_moe:
        mlp = arch.experts * arch.hidden * arch.moe_intermediate
    else:
        mlp = arch.hidden * arch.intermediate
    return max(mlp, arch.hidden * arch.q_dim)


# ---------------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Estimate:
    total_gib: float
    breakdown: dict[str, float]
    alloc_gib: float = 0.0  # comparable with torch.cuda.max_memory_allocated
    setup: dict = field(default_factory=dict)
    phase: str = "step"  # the phase that sets the peak (see the module docstring)
    phases: dict[str, float] = field(default_factory=dict)  # total GiB of each phase

    def to_dict(self) -> dict:
        return {"total_gib": self.total_gib, "breakdown": dict(self.breakdown),
                "alloc_gib": self.alloc_gib, "setup": dict(self.setup), "phase": self.phase,
                "phases": dict(self.phases)}


def rl_values(rl) -> dict:
    """The estimator's view of a core.config.RLConfig (or a dict with its field names)."""
    if rl is None:
        return {}
    get = rl.get if isinstance(rl, dict) else (lambda k, d=None: getattr(rl, k, d))
    out = {}
    for key, name in (("max_prompt_len", "prompt_len"), ("max_completion_len", "completion_len"),
                      ("num_generations", "num_generations")):
        if get(key) is not None:
            out[name] = get(key)
    if get("kl_beta") is not None:
        out["kl"] = float(get("kl_beta")) > 0
    return out


def _setup(method, seq_len, micro_batch, rank, target_modules, grad_ckpt, backend, quant, optimizer,
           stage: str = "sft", strategy: str = "single", gpus: int = 1, rl=None, generation_batch=None,
           precompute_ref: bool = False) -> TrainSetup:
    _check("method", method, METHODS)
    _check("grad_ckpt", grad_ckpt, GRAD_CKPT)
    _check("backend", backend, BACKENDS)
    _check("quant", quant, QUANTS)
    _check("optimizer", optimizer, OPTIMIZERS)
    _check("train.stage", stage, STAGES)
    _check("train.strategy", strategy, STRATEGIES)
    targets = tuple(target_modules)
    if not targets:
        raise ConfigError("choose at least one target module", "target_modules")
    world = 1 if strategy == "single" else _positive("gpus", gpus)
    extra = rl_values(rl)
    for name, where in (("prompt_len", "rl.max_prompt_len"), ("completion_len", "rl.max_completion_len"),
                        ("num_generations", "rl.num_generations")):
        if name in extra:
            extra[name] = _positive(where, extra[name])
    if generation_batch is not None:
        extra["generation_batch"] = _positive("generation_batch", generation_batch)
    return TrainSetup(method=method, seq_len=_positive("seq_len", seq_len),
                      micro_batch=_positive("micro_batch", micro_batch), rank=_positive("rank", rank),
                      target_modules=targets, grad_ckpt=grad_ckpt, backend=backend, quant=quant,
                      optimizer=optimizer, stage=stage, strategy=strategy, world_size=world,
                      precompute_ref=bool(precompute_ref), **extra)


def _sum_terms(terms: list[Term], c: Coefficients) -> dict[str, float]:
    out = dict.fromkeys(CATEGORIES + STAGE_CATEGORIES, 0.0)
    for t in terms:
        out[t.category] += (c.get(t.coef) if t.coef else 1.0) * t.units / GIB
    return out


def peak_terms(arch: Arch, s: TrainSetup, c: Coefficients) -> tuple[str, list[Term]]:
    """(phase, its terms) of the phase with the largest allocation."""
    best = None
    for phase in phases_of(s):
        terms = phase_terms(arch, s, c, phase)
        alloc = sum(_sum_terms(terms, c).values())
        if best is None or alloc > best[0]:
            best = (alloc, phase, terms)
    return best[1], best[2]


# Parts allocated and freed every step: the caching allocator keeps a share of them as slack (the
# weights are allocated once and pack tightly). Measured on SFT rows; the stages' rollouts and
# reference passes are left to reserve_frac (their few points cannot tell a share of their own).
TRANSIENT = ("activations", "logits")


def transient_gib(parts: dict[str, float]) -> float:
    return sum(parts.get(k, 0.0) for k in TRANSIENT)


def _finish(parts: dict[str, float], c: Coefficients, backend: str) -> tuple[float, float, dict[str, float]]:
    parts = dict(parts)
    alloc = sum(parts.values())
    parts["overhead"] += (alloc * c.get("reserve_frac") + c.get("cuda_context_gib")
                          + transient_gib(parts) * c.get(f"backends.{backend}.transient_reserve_frac"))
    return alloc, sum(parts.values()), parts


def estimate_training(arch_or_key: str | Arch | ModelEntry, *, method: str, seq_len: int, micro_batch: int,
                      rank: int = 16, target_modules=ALL_LINEAR, grad_ckpt: str = "unsloth",
                      backend: str = "unsloth", quant: str = "auto", optimizer: str = "adamw_8bit",
                      stage: str = "sft", rl=None, generation_batch: int | None = None,
                      precompute_ref: bool = False, strategy: str = "single", gpus: int = 1,
                      coefficients: Coefficients | None = None) -> Estimate:
    """Peak training VRAM in GiB per card, with its breakdown (weights, lora, activations, logits,
    overhead; reference and generation for the stages that have them).

    ``quant`` (QLoRA): auto = Unsloth's dynamic 4-bit for dense models on the Unsloth backend,
    else plain bnb 4-bit; nf4 (quantized on load) takes as much memory as bnb4.
    ``stage`` (train.stage) with ``rl`` (a core.config.RLConfig, or a dict of its fields): dpo / orpo
    count ``micro_batch`` preference rows of ``seq_len`` tokens per sequence; grpo counts
    ``micro_batch`` completions of rl.max_prompt_len + rl.max_completion_len tokens, and
    ``generation_batch`` completions decoded at once per card (None: micro_batch; TRL's default is
    micro_batch x grad_accum). ``precompute_ref``: dpo with TRL's precompute_ref_log_probs.
    ``strategy`` and ``gpus`` (the number of cards): see the module docstring."""
    arch = resolve_arch(arch_or_key)
    s = _setup(method, seq_len, micro_batch, rank, target_modules, grad_ckpt, backend, quant, optimizer,
               stage, strategy, gpus, rl, generation_batch, precompute_ref)
    c = coefficients or load_coefficients()
    phases = {}
    for phase in phases_of(s):
        phases[phase] = round(_finish(_sum_terms(phase_terms(arch, s, c, phase), c), c, s.train_backend)[1], 3)
    peak, terms = peak_terms(arch, s, c)
    alloc, total, parts = _finish(_sum_terms(terms, c), c, s.train_backend)
    if s.stage == "sft":
        parts = {k: v for k, v in parts.items() if k in CATEGORIES}
    setup = {"method": s.method, "seq_len": s.seq_len, "micro_batch": s.micro_batch, "rank": s.rank,
             "target_modules": list(s.target_modules), "grad_ckpt": s.grad_ckpt, "backend": s.train_backend,
             "quant": s.resolved_quant(arch), "optimizer": s.optimizer, "stage": s.stage,
             "strategy": s.strategy, "gpus": s.world_size}
    if s.stage == "grpo":
        setup.update(prompt_len=s.prompt_len, completion_len=s.completion_len,
                     generation_batch=s.generation_batch or s.micro_batch, kl=s.kl)
    elif s.stage == "dpo":
        setup["precompute_ref"] = s.precompute_ref
    return Estimate(total_gib=round(total, 3), breakdown={k: round(v, 3) for k, v in parts.items()},
                    alloc_gib=round(alloc, 3), setup=setup, phase=peak, phases=phases)


def estimate_run(cfg, *, model=None, micro_batch: int | None = None, backend: str | None = None,
                 optimizer: str | None = None, gpus: int | None = None,
                 coefficients: Coefficients | None = None) -> Estimate:
    """The per-card estimate of a core.config.RunConfig: stage, rl settings, strategy and cards
    included. ``model`` (default cfg.model.name_or_path), ``micro_batch`` (default the setting;
    required while it is auto), ``backend`` (default the setting, auto counting as unsloth),
    ``optimizer`` (auto counting as adamw_8bit) and ``gpus`` (default: the count train.gpus names,
    else 1) override what the run will really get."""
    t = cfg.train
    mb = micro_batch if micro_batch is not None else t.micro_batch
    if not isinstance(mb, int):
        raise ConfigError("an estimate needs a whole micro-batch; auto picks one when the run starts",
                          "train.micro_batch")
    backend = backend or cfg.model.backend
    backend = backend if backend in BACKENDS else "unsloth"
    optimizer = optimizer or t.optimizer
    optimizer = optimizer if optimizer in OPTIMIZERS else "adamw_8bit"
    stage = getattr(t, "stage", "sft")
    strategy = getattr(t, "strategy", "single")
    if gpus is None:
        gpus = 1 if strategy == "single" else (gpu_count_of(getattr(t, "gpus", "auto")) or visible_gpu_count())
    generation = mb * t.grad_accum if stage == "grpo" else None
    return estimate_training(model or cfg.model.name_or_path, method=cfg.model.method, seq_len=t.max_seq_len,
                             micro_batch=mb, rank=cfg.lora.r, target_modules=list(cfg.lora.target_modules),
                             grad_ckpt=t.gradient_checkpointing, backend=backend, quant=cfg.model.quant,
                             optimizer=optimizer, stage=stage, rl=getattr(cfg, "rl", None),
                             generation_batch=generation,
                             precompute_ref=bool(getattr(getattr(cfg, "rl", None), "precompute_ref", False)),
                             strategy=strategy, gpus=max(int(gpus), 1), coefficients=coefficients)


def visible_gpu_count() -> int:
    """Cards a run with ``train.gpus: auto`` gets: the launcher's WORLD_SIZE inside a run, else the
    GPUs this process may use (core.train.launch's count), at least 1 so that an estimate is per one
    card or more."""
    import os

    from core.train.launch import visible_gpu_count as launcher_count

    text = os.environ.get("WORLD_SIZE", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return max(launcher_count(ask_torch=False), 1)


def gpu_count_of(setting) -> int | None:
    """How many cards a train.gpus value names: "2" -> 2, "0,1" -> 2, "auto" -> None (every visible
    card, known only on the machine), and None for a value the pre-run check refuses."""
    from core.train.launch import parse_gpus

    try:
        kind, value = parse_gpus(setting)
    except ConfigError:
        return None
    return None if kind == "auto" else value if kind == "count" else len(value)


def estimate_inference(arch_or_key: str | Arch | ModelEntry, *, method: str, context_len: int, batch: int = 1,
                       adapter_rank: int = 0, target_modules=ALL_LINEAR, quant: str = "auto",
                       coefficients: Coefficients | None = None) -> Estimate:
    """VRAM to chat with a model: weights + adapter + KV cache (+ prefill activations, overhead).
    Breakdown keys: weights, adapter, kv_cache, activations, overhead."""
    arch = resolve_arch(arch_or_key)
    _check("method", method, METHODS)
    _check("quant", quant, QUANTS)
    context_len = _positive("context_len", context_len)
    batch = _positive("batch", batch)
    if isinstance(adapter_rank, bool) or not isinstance(adapter_rank, int) or adapter_rank < 0:
        raise ConfigError(f"must be a whole number >= 0, got {adapter_rank!r}", "adapter_rank")
    c = coefficients or load_coefficients()
    counts = param_counts(arch)
    if method == "lora":
        weights = counts.total * 2.0
    else:
        nf4 = c.get("nf4_bytes_per_param")
        dyn = quant in ("auto", "dynamic4") and not arch.is_moe
        kept16 = c.get("dynamic4_extra_frac") if dyn else 0.0
        weights = counts.linear * (nf4 + kept16 * (2.0 - nf4)) + (counts.embed + counts.other) * 2.0
    adapter = lora_param_count(arch, adapter_rank, target_modules) * 2.0 if adapter_rank else 0.0
    kv = 2 * arch.layers * arch.kv_dim * context_len * batch * 2.0
    # Prefill runs without gradients: only one layer's transient tensors (q/k/v, the SwiGLU
    # intermediates, residuals) exist at a time, in chunks of at most 8192 tokens; no full logits.
    prefill = min(context_len, 8192) * batch * forward_width(arch) * 2.0
    if method == "qlora":
        prefill += largest_linear(arch) * 2.0
    parts = {"weights": weights / GIB, "adapter": adapter / GIB, "kv_cache": kv / GIB,
             "activations": prefill / GIB}
    alloc = sum(parts.values()) + c.get("inference_overhead_gib")
    parts["overhead"] = c.get("inference_overhead_gib") + alloc * c.get("reserve_frac") + c.get("cuda_context_gib")
    total = sum(parts.values())
    setup = {"method": method, "context_len": context_len, "batch": batch, "adapter_rank": adapter_rank}
    return Estimate(total_gib=round(total, 3), breakdown={k: round(v, 3) for k, v in parts.items()},
                    alloc_gib=round(alloc, 3), setup=setup)


# -------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class FitResult:
    coefficients: Coefficients
    rows: list[dict]  # per point: model, setup, measured, estimated, error (relative)

    @property
    def max_abs_error(self) -> float:
        return max((abs(r["error"]) for r in self.rows), default=0.0)


def point_setup(point: dict) -> tuple[Arch, TrainSetup]:
    """Arch and setup of one measurement line of bench/results/vram.jsonl."""
    arch = Arch(**point["arch"]) if isinstance(point.get("arch"), dict) else resolve_arch(point["model"])
    targets = point.get("targets") or ALL_LINEAR
    if isinstance(targets, str):
        targets = ALL_LINEAR if targets in ("all", "all-linear", "all_linear") else targets.split(",")
    s = _setup(point["method"], int(point["seq_len"]), int(point["micro_batch"]), int(point.get("rank", 16)),
               targets, point.get("grad_ckpt", "unsloth"), point.get("backend", "unsloth"),
               point.get("quant", "auto") if point.get("quant") in QUANTS else "auto",
               point.get("optimizer", "adamw_8bit") if point.get("optimizer") in OPTIMIZERS else "adamw_8bit",
               stage=point.get("stage", "sft"), strategy=point.get("strategy", "single"),
               gpus=int(point.get("gpus", 1)), rl=point.get("rl"), generation_batch=point.get("generation_batch"),
               precompute_ref=bool(point.get("precompute_ref", False)))
    return arch, s


def usable_points(points: list[dict]) -> list[dict]:
    """Points that finished and carry a positive peak (OOM and failed points are left out)."""
    return [p for p in points if p.get("status", "ok") == "ok" and (p.get("peak_alloc_gib") or 0) > 0]


def calibrate(points: list[dict], base: Coefficients | None = None, *, prior: float = 1e-5,
              keep: tuple[str, ...] = ()) -> FitResult:
    """Refit the coefficients to measured ``peak_alloc_gib`` (least squares on relative error,
    coefficients kept >= 0, each pulled weakly towards its current value so that coefficients the
    points say nothing about stay put). ``reserve_frac`` and ``cuda_context_gib`` are refit from
    ``nvml_used_gib`` where points carry it. ``keep`` names coefficients held at their current value:
    terms that grow alike on the measured points (two per-token activation terms, say) cannot be told
    apart by them, and the fit would otherwise hand one all of it and pin the other at zero."""
    import numpy as np

    base = base or load_coefficients()
    pts = [p for p in usable_points(points) if not p.get("held_out")]  # held-out points judge the fit
    if not pts:
        raise ValueError("no usable measurements (need status ok and peak_alloc_gib > 0)")
    # A point measures the peak of one phase: the one the current coefficients say is largest.
    rows_terms = [peak_terms(*point_setup(p), base)[1] for p in pts]
    names = sorted({t.coef for terms in rows_terms for t in terms if t.coef})
    index = {n: i for i, n in enumerate(names)}
    y = np.array([float(p["peak_alloc_gib"]) for p in pts])
    design = np.zeros((len(pts), len(names)))
    fixed = np.zeros(len(pts))
    for r, terms in enumerate(rows_terms):
        for t in terms:
            if t.coef:
                design[r, index[t.coef]] += t.units / GIB
            else:
                fixed[r] += t.units / GIB
    seed = np.array([base.get(n) for n in names])
    # Scale columns by their seed contribution so the prior is relative and columns are comparable.
    # A zero seed (a term the physics allows but no measurement has shown yet) is scaled to the value
    # at which its term would be a whole measured peak, so the prior does not pin it at zero.
    whole = 1.0 / np.maximum((design / y[:, None]).max(axis=0), 1e-12)
    scale = np.where(seed == 0, whole, np.maximum(np.abs(seed), 1e-3))
    a = design * scale / y[:, None]
    b = (y - fixed) / y
    active = np.array([n not in keep for n in names], dtype=bool)
    b = b - a[:, ~active] @ (seed / scale)[~active]  # kept coefficients contribute their current value
    theta = seed / scale
    for _ in range(len(names) + 1):
        cols = np.flatnonzero(active)
        prior_rows = math.sqrt(prior) * np.eye(len(names))[cols][:, cols]
        lhs = np.vstack([a[:, cols], prior_rows])
        rhs = np.concatenate([b, math.sqrt(prior) * (seed / scale)[cols]])
        sol, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
        theta = np.where(active, 0.0, seed / scale)
        theta[cols] = sol
        negative = cols[sol < 0]
        if not len(negative):
            break
        active[negative] = False  # a negative memory coefficient is unphysical: pin it at zero
        seed[negative] = 0.0
    fitted = {n: float(v) for n, v in zip(names, theta * scale)}
    meta = {"n_points": len(pts), "source": f"fit to {len(pts)} GPU measurements "
            f"({', '.join(sorted({str(p.get('card', '?')) for p in pts}))})"}
    coeffs = base.with_values(fitted, **meta)
    with_nvml = [p for p in pts if (p.get("nvml_used_gib") or 0) > 0]
    if len(with_nvml) >= 2:
        coeffs = coeffs.with_values(_fit_slack(with_nvml, coeffs))
    return FitResult(coeffs, compare(points, coeffs))


def _fit_slack(points: list[dict], c: Coefficients) -> dict[str, float]:
    """NVML used minus the allocated peak = CUDA context + reserve_frac x allocated + each backend's
    transient_reserve_frac x its activations and logits (from the estimate with the allocation
    coefficients just fit). Least squares on the error relative to NVML's figure,
    coefficients kept >= 0; a backend without points keeps its value."""
    import numpy as np

    alloc = np.array([float(p["peak_alloc_gib"]) for p in points])
    nvml = np.array([float(p["nvml_used_gib"]) for p in points])
    names = ["cuda_context_gib", "reserve_frac"]
    cols = [np.ones_like(alloc), alloc]
    transient = np.zeros((len(points), len(BACKENDS)))
    for r, p in enumerate(points):
        est = estimate_setup(*point_setup(p), c)
        transient[r, BACKENDS.index(est.setup["backend"])] = transient_gib(est.breakdown)
    for j, backend in enumerate(BACKENDS):
        if transient[:, j].any():
            names.append(f"backends.{backend}.transient_reserve_frac")
            cols.append(transient[:, j])
    design = np.vstack(cols).T / nvml[:, None]  # relative error, as the allocation fit
    extra = (nvml - alloc) / nvml
    active = np.ones(len(names), dtype=bool)
    values = np.zeros(len(names))
    for _ in range(len(names)):
        sol, *_ = np.linalg.lstsq(design[:, active], extra, rcond=None)
        values[:] = 0.0
        values[active] = sol
        if not (values < 0).any():
            break
        active &= values > 0  # a negative slack is unphysical: drop the term and refit the others
    return {n: max(float(v), 0.0) for n, v in zip(names, values)}


def estimate_setup(arch: Arch, s: TrainSetup, c: Coefficients | None = None) -> Estimate:
    """:func:`estimate_training` of a TrainSetup (as :func:`point_setup` reads one)."""
    rl = {"max_prompt_len": s.prompt_len, "max_completion_len": s.completion_len,
          "num_generations": s.num_generations, "kl_beta": 1.0 if s.kl else 0.0}
    return estimate_training(arch, method=s.method, seq_len=s.seq_len, micro_batch=s.micro_batch, rank=s.rank,
                             target_modules=s.target_modules, grad_ckpt=s.grad_ckpt, backend=s.backend,
                             quant=s.quant, optimizer=s.optimizer, stage=s.stage, rl=rl,
                             generation_batch=s.generation_batch or None, precompute_ref=s.precompute_ref,
                             strategy=s.strategy, gpus=s.world_size, coefficients=c)


def compare(points: list[dict], coefficients: Coefficients | None = None) -> list[dict]:
    """Per usable point: measured vs estimated allocated peak (and NVML used vs total)."""
    c = coefficients or load_coefficients()
    rows = []
    for p in usable_points(points):
        arch, s = point_setup(p)
        est = estimate_setup(arch, s, c)
        measured = float(p["peak_alloc_gib"])
        nvml = p.get("nvml_used_gib")
        rows.append({
            "card": p.get("card", ""), "model": p.get("model", ""), "method": s.method, "stage": s.stage,
            "strategy": s.strategy, "gpus": s.world_size, "seq_len": s.seq_len,
            "micro_batch": s.micro_batch, "rank": s.rank, "grad_ckpt": s.grad_ckpt, "backend": s.backend,
            "measured_gib": measured, "estimated_gib": est.alloc_gib,
            "error": (est.alloc_gib - measured) / measured,
            "nvml_used_gib": nvml, "estimated_total_gib": est.total_gib,
            "nvml_error": (est.total_gib - nvml) / nvml if nvml else None,
            "held_out": bool(p.get("held_out")),
        })
    return rows


def read_points(path: str | Path) -> list[dict]:
    """Lines of a vram.jsonl file; a broken line is an error naming file:line."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"broken JSON line ({exc.msg})", "", f"{path}:{lineno}") from None
    return out
