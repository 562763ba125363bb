"""Model loading for training: Unsloth (FastLanguageModel) or transformers + PEFT (+ bitsandbytes).

This is the ONLY module that imports unsloth, and it does so lazily and first: Unsloth patches
transformers, TRL and PEFT when it is imported, so :func:`activate` must run before anything else
imports them in the worker process.
"""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import ConfigError
from core.train.notices import Notice

GC_MODES = {"unsloth": "unsloth", "on": True, "off": False}


@dataclass
class Loaded:
    model: object
    tokenizer: object
    backend: str  # unsloth | peft
    method: str  # lora | qlora (after any fallback)
    dtype: str  # bfloat16 | float16 | float32
    device: str  # cuda | cpu
    notices: list[str] = field(default_factory=list)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def choose_backend(requested: str) -> tuple[str, list[str]]:
    """The backend to use for ``model.backend`` = requested, with notices explaining the choice."""
    cuda = cuda_available()
    unsloth = has_package("unsloth")
    if requested == "unsloth":
        if not cuda:
            raise ConfigError("backend 'unsloth' needs an NVIDIA GPU with CUDA, and none is visible; "
                              "use backend 'auto' or 'peft'", "model.backend")
        if not unsloth:
            raise ConfigError("backend 'unsloth' needs the unsloth package: "
                              "pip install -r requirements-gpu.txt", "model.backend")
        return "unsloth", []
    if requested == "peft":
        return "peft", []
    if cuda and unsloth:
        return "unsloth", []
    return "peft", [Notice("backend_peft_no_cuda" if not cuda else "backend_peft_no_unsloth")]


def autocast_choice(cfg, loaded) -> tuple[bool, str]:
    """Whether the trainer autocasts its forward passes to the model's 16-bit dtype (train.autocast),
    and a line for the log saying why."""
    choice = cfg.train.autocast
    if loaded.dtype not in ("bfloat16", "float16"):
        return False, f"autocast: off (the model is in {loaded.dtype})"
    if loaded.dtype == "float16":  # fp16 trains with a loss scaler, which comes with autocast
        why = "train.autocast: on" if choice == "on" else "a float16 model trains with autocast and a loss scaler"
        return True, f"autocast: on ({why})"
    if choice != "auto":
        return choice == "on", f"autocast: {choice} (train.autocast: {choice})"
    if loaded.backend == "unsloth" and cfg.lora.dropout == 0 and cfg.train.stage == "sft":
        return False, ("autocast: off (Unsloth's LoRA kernels cast the fp32 adapter weights to bf16 "
                       "themselves; autocast would only add host work to every operation)")
    why = ("lora.dropout > 0 runs the adapters outside Unsloth's kernels" if loaded.backend == "unsloth"
           and cfg.lora.dropout else f"{cfg.train.stage} on the {loaded.backend} backend")
    return True, f"autocast: on ({why})"


PRECISION_ENV = ("UNSLOTH_MIXED_PRECISION", "ACCELERATE_MIXED_PRECISION")


@contextmanager
def trainer_precision(cfg, loaded):
    """Build a trainer inside this block so it autocasts as ``autocast_choice`` says; yields that
    choice. training_args turns the bf16 / fp16 flags off where autocast is off; Unsloth's trainers
    read UNSLOTH_MIXED_PRECISION when they are built instead (they turn bf16 autocast on over fp32
    LoRA weights unless it says bfloat16), so it is set for the build and put back after it."""
    autocast, why = autocast_choice(cfg, loaded)
    saved = {k: os.environ.get(k) for k in PRECISION_ENV}
    if loaded.backend == "unsloth" and loaded.dtype == "bfloat16" and not autocast:
        os.environ["UNSLOTH_MIXED_PRECISION"] = "bfloat16"
    try:
        yield autocast, why
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def settle_precision(trainer, autocast: bool) -> None:
    """After the build: Unsloth marks a run without autocast for a bf16 evaluation, which casts the
    whole model (the fp32 LoRA weights too) to bf16 before an evaluation outside training, such as
    the final one before the adapter is saved. Evaluation runs as training does instead."""
    if not autocast:
        trainer.args.bf16_full_eval = False
        trainer.args.fp16_full_eval = False


def varlen_attention_available() -> bool:
    """Whether Unsloth has a variable-length attention kernel for packed rows: flash-attn, xformers,
    or torch's varlen_attn with GQA (torch 2.12+). Without one it runs one attention call per packed
    segment (unsloth/utils/attention_dispatch.py)."""
    if has_package("flash_attn") or has_package("xformers"):
        return True
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def activate(backend: str) -> list[str]:
    """Import Unsloth before transformers/TRL/PEFT so its patches apply. Returns notices.

    In ``auto`` mode the caller may fall back to PEFT when this raises ImportError."""
    if backend != "unsloth":
        return []
    import os

    # Unsloth's statistics ping and hub checks would only wait for a timeout offline.
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401  (must come first)

    return [Notice("backend_unsloth", version=getattr(unsloth, "__version__", ""))]


def patch_rl(backend: str, stage: str) -> str | None:
    """Unsloth's patches of TRL's preference / RL trainers (its faster log-prob and generation
    paths), applied before core.train.stages looks the trainer classes up. Only for the unsloth
    backend; the PEFT backend trains with TRL's classes as they are. Returns a note when Unsloth
    could not patch them (the run then trains with TRL's classes, and says so)."""
    if backend != "unsloth" or stage == "sft":
        return None
    try:
        from unsloth import FastLanguageModel, PatchFastRL

        # No algorithm name: the name only selects Unsloth's usage statistics, which stay off.
        PatchFastRL(None, FastLanguageModel)
    except Exception as exc:  # an Unsloth release without these patches: TRL's trainer still trains
        return f"Unsloth's {stage} trainer patches failed ({type(exc).__name__}: {exc}); using TRL's trainer as is"
    return None


# ----------------------------------------------------------------------------------- the model
def resolve_model_path(model_cfg, *, download: bool = True) -> Path:
    """A local folder for ``model.name_or_path``, through the one resolver (core.models.resolve):
    the demo model, an existing folder, a catalog key (``qwen3-1.7b``), a hub id, else an error
    naming what is known. Catalog keys and hub ids are downloaded when ``download`` allows."""
    from core.models import resolve_model

    try:
        return Path(resolve_model(model_cfg.name_or_path, method=model_cfg.method, quant=model_cfg.quant,
                                  hub=model_cfg.hub, download=download))
    except ConfigError as exc:
        if exc.where:
            raise
        raise exc.at("model.name_or_path") from None  # keeps its kind (e.g. network) and its advice


def model_config_json(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}/config.json ({exc})", "model.name_or_path") from None


def is_prequantized(path: Path) -> bool:
    q = model_config_json(path).get("quantization_config") or {}
    return bool(q.get("load_in_4bit") or q.get("quant_method") in ("bitsandbytes", "bnb"))


def resolve_dtype(requested: str, cuda: bool) -> str:
    if requested != "auto":
        if requested in ("bfloat16", "float16") and not cuda:
            return "float32"  # CPU training in half precision is slow and unstable
        return requested
    if not cuda:
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _check_tokenizer(tokenizer, path: Path) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer in {path} has no chat template; use a Qwen3 model that ships "
                          "one (the instruct/hybrid-thinking releases do)", "model.name_or_path")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token


def load(cfg, model_path: Path, backend: str, *, rank_device: int | None = None, strategy: str = "single") -> Loaded:
    """Load the base model with LoRA adapters attached, ready for the trainer.

    ``rank_device``: this process is one rank of a ddp / fsdp run and loads its own copy onto that
    GPU (``device_map={"": local_rank}``; for QLoRA each rank quantizes its own 4-bit copy there).
    ``strategy`` fsdp: the 4-bit weights are stored in the compute dtype, so FSDP can shard them
    like 16-bit ones (bitsandbytes' ``bnb_4bit_quant_storage``)."""
    if backend == "unsloth":
        if strategy == "fsdp":
            raise ConfigError("fsdp shards the model on the transformers + PEFT backend; Unsloth trains one "
                              "copy per GPU: use strategy ddp, or model.backend peft", "model.backend")
        return _load_unsloth(cfg, model_path, rank_device)
    return _load_peft(cfg, model_path, rank_device, strategy)


def _load_unsloth(cfg, path: Path, rank_device: int | None = None) -> Loaded:
    import torch
    from unsloth import FastLanguageModel

    notices = []
    prequant = is_prequantized(path)
    method = cfg.model.method
    if method == "lora" and prequant:
        raise ConfigError(f"{path} is a 4-bit checkpoint; LoRA 16-bit needs the 16-bit model. Use method "
                          "qlora, or the original model", "model.method")
    dtype = resolve_dtype(cfg.model.dtype, True)
    gc = GC_MODES[cfg.train.gradient_checkpointing]
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=cfg.train.max_seq_len,
        dtype=getattr(torch, dtype),
        load_in_4bit=method == "qlora",
        load_in_16bit=method == "lora",
        full_finetuning=False,
        use_gradient_checkpointing=gc,
        random_state=cfg.train.seed,
        trust_remote_code=cfg.model.trust_remote_code,
        use_exact_model_name=True,  # a local folder stays itself, never swapped for a hub repo
        **({"device_map": {"": rank_device}} if rank_device is not None else {}),
    )
    if method == "qlora":
        notices.append(Notice("qlora_prequantized" if prequant else "qlora_nf4_on_load"))
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        target_modules=list(cfg.lora.target_modules),
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias="none",
        use_gradient_checkpointing=gc,
        random_state=cfg.train.seed,
        use_rslora=cfg.lora.use_rslora,
        max_seq_length=cfg.train.max_seq_len,
    )
    _check_tokenizer(tokenizer, path)
    return Loaded(model, tokenizer, "unsloth", method, dtype, "cuda", notices)


def _load_peft(cfg, path: Path, rank_device: int | None = None, strategy: str = "single") -> Loaded:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notices = []
    cuda = torch.cuda.is_available()
    prequant = is_prequantized(path)
    method = cfg.model.method
    if prequant and not cuda:
        raise ConfigError(f"{path} is a 4-bit checkpoint, which needs a CUDA GPU; on the CPU use a "
                          "16-bit model", "model.name_or_path")
    if method == "lora" and prequant:
        raise ConfigError(f"{path} is a 4-bit checkpoint; LoRA 16-bit needs the 16-bit model. Use method "
                          "qlora, or the original model", "model.method")
    if method == "qlora" and not cuda:
        notices.append(Notice("qlora_cpu_fallback"))
        method = "lora"
    if method == "qlora" and not has_package("bitsandbytes"):
        raise ConfigError("QLoRA needs the bitsandbytes package: pip install bitsandbytes", "model.method")
    dtype = resolve_dtype(cfg.model.dtype, cuda)
    torch_dtype = getattr(torch, dtype)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": cfg.model.trust_remote_code,
              "attn_implementation": "sdpa"}
    if cuda and not (strategy == "fsdp" and method == "lora"):
        kwargs["device_map"] = {"": rank_device if rank_device is not None else torch.cuda.current_device()}
    # fsdp, 16-bit: loaded on the CPU (rank 0 only, the others get empty weights: accelerate's
    # cpu_ram_efficient_loading) and moved to the GPUs shard by shard, so no card ever holds it all.
    if method == "qlora" and not prequant:
        from transformers import BitsAndBytesConfig

        # FSDP shards parameters of one dtype: the packed 4-bit weights are stored as that dtype.
        storage = {"bnb_4bit_quant_storage": torch_dtype} if strategy == "fsdp" else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype, **storage)
        notices.append(Notice("qlora_nf4_bnb"))
    elif method == "qlora":
        notices.append(Notice("qlora_prequantized"))
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=cfg.model.trust_remote_code)
    _check_tokenizer(tokenizer, path)
    model.config.use_cache = False
    gc = cfg.train.gradient_checkpointing
    if gc == "unsloth":
        notices.append(Notice("gc_standard_recompute"))
    if gc != "off":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_cfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), use_rslora=cfg.lora.use_rslora,
                          bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.train.seed)  # the LoRA A matrices' init
    model = get_peft_model(model, peft_cfg)
    return Loaded(model, tokenizer, "peft", method, dtype, "cuda" if cuda else "cpu", notices)


def save_adapter(loaded_or_model, tokenizer, out: Path) -> Path:
    """The adapter in PEFT format (adapter_config.json + adapter_model.safetensors) + tokenizer."""
    model = loaded_or_model.model if isinstance(loaded_or_model, Loaded) else loaded_or_model
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
