"""estimate: peak VRAM of a training setup (or of chatting with a model), with its breakdown."""

from __future__ import annotations

HELP = "Estimate peak GPU memory of LoRA / QLoRA training (or inference) for a Qwen3 model."


def add_rl_flags(p) -> None:
    """The rl settings a memory estimate of the stages reads, as flags (`estimate`, `hw`)."""
    for flag, path in (("--prompt-len", "rl.max_prompt_len"), ("--completion-len", "rl.max_completion_len"),
                       ("--num-generations", "rl.num_generations")):
        info = _info(path)
        p.add_argument(flag, type=int, default=info.default, help=info.help)
    kl = _info("rl.kl_beta")
    p.add_argument("--kl-beta", type=float, default=kl.default, help=kl.help)


def _info(path: str):
    """Help text and choices of a RunConfig setting, so flags and config share one definition."""
    from core.config import RunConfig
    from core.settings import field_info

    return next(i for i in field_info(RunConfig) if i.path == path)


def add_arguments(p) -> None:
    from core.train.autobatch import REFERENCE_MICRO_BATCH

    p.add_argument("--model", required=True,
                   help="Catalog key (e.g. qwen3-8b; see `python -m core hw`) or a local model folder "
                        "with a Qwen3 config.json.")
    method = _info("model.method")
    p.add_argument("--method", default=method.default, choices=list(method.choices), help=method.help)
    p.add_argument("--seq-len", type=int, default=_info("train.max_seq_len").default,
                   help=_info("train.max_seq_len").help + " With --inference: the context length.")
    p.add_argument("--batch", type=int, default=REFERENCE_MICRO_BATCH,
                   help="Micro-batch (rows per GPU step) to estimate; `python -m core hw` shows what "
                        "train.micro_batch auto picks on this machine's cards.")
    p.add_argument("--rank", type=int, default=16, help=_info("lora.r").help)
    p.add_argument("--targets", default="all",
                   help="Comma-separated projections that get adapters, or 'all' (all 7). "
                        + _info("lora.target_modules").help)
    ckpt = _info("train.gradient_checkpointing")
    p.add_argument("--grad-ckpt", default=ckpt.default, choices=list(ckpt.choices), help=ckpt.help)
    p.add_argument("--backend", default="unsloth", choices=["unsloth", "peft"],
                   help="unsloth: fused loss and offloaded checkpointing (the GPU default). "
                        "peft: plain transformers + PEFT (+ bitsandbytes for QLoRA).")
    quant = _info("model.quant")
    p.add_argument("--quant", default=quant.default, choices=list(quant.choices), help=quant.help)
    opt = _info("train.optimizer")
    p.add_argument("--optimizer", default="adamw_8bit", choices=[c for c in opt.choices if c != "auto"],
                   help=opt.help)
    stage = _info("train.stage")
    p.add_argument("--stage", default=stage.default, choices=list(stage.choices),
                   help=stage.help + " dpo / orpo: --batch counts preference rows (2 sequences each); grpo: "
                        "completions.")
    strategy = _info("train.strategy")
    p.add_argument("--strategy", default=strategy.default, choices=list(strategy.choices),
                   help=strategy.help + " The estimate is per GPU.")
    p.add_argument("--gpus", type=int, default=1, help="GPUs of a ddp / fsdp run (fsdp shards over them).")
    add_rl_flags(p)
    p.add_argument("--generation-batch", type=int, default=None,
                   help="grpo: completions decoded at once per GPU (default --batch x 4, TRL's micro-batch x "
                        "grad_accum at the default accumulation).")
    p.add_argument("--precompute-ref", action="store_true",
                   help="dpo: reference log-probs computed once before training (TRL's "
                        "precompute_ref_log_probs) instead of in every step.")
    p.add_argument("--inference", action="store_true",
                   help="Estimate chatting instead: weights + adapter (--rank, 0 for none) + KV cache "
                        "for --seq-len tokens of context and --batch sequences.")
    p.add_argument("--json", action="store_true", help="Print one JSON document.")


def run(args) -> int:
    from core.cli import print_json
    from core.config import ALL_LINEAR
    from core.hardware.estimate import estimate_inference, estimate_training

    targets = ALL_LINEAR if args.targets.strip().lower() in ("all", "all-linear") else \
        [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.inference:
        est = estimate_inference(args.model, method=args.method, context_len=args.seq_len, batch=args.batch,
                                 adapter_rank=args.rank, target_modules=targets, quant=args.quant)
    else:
        from core.config import TrainConfig

        rl = {"max_prompt_len": args.prompt_len, "max_completion_len": args.completion_len,
              "num_generations": args.num_generations, "kl_beta": args.kl_beta}
        generation = args.generation_batch or (args.batch * TrainConfig().grad_accum if args.stage == "grpo" else None)
        est = estimate_training(args.model, method=args.method, seq_len=args.seq_len, micro_batch=args.batch,
                                rank=args.rank, target_modules=targets, grad_ckpt=args.grad_ckpt,
                                backend=args.backend, quant=args.quant, optimizer=args.optimizer,
                                stage=args.stage, rl=rl, generation_batch=generation,
                                precompute_ref=args.precompute_ref, strategy=args.strategy, gpus=args.gpus)
    if args.json:
        print_json({**est.to_dict(), "model": args.model, "kind": "inference" if args.inference else "training"})
        return 0
    what = "chat" if args.inference else "training"
    setup = ", ".join(f"{k}={v}" for k, v in est.setup.items() if k != "target_modules")
    print(f"{args.model} {what} ({setup})")
    width = max(len(k) for k in est.breakdown)
    for name, gib in est.breakdown.items():
        print(f"  {name:<{width}}  {gib:7.2f} GiB")
    print(f"  {'total':<{width}}  {est.total_gib:7.2f} GiB   (allocated by PyTorch: {est.alloc_gib:.2f} GiB; "
          "the rest is allocator slack and the CUDA context)")
    if len(est.phases) > 1:
        phases = ", ".join(f"{k} {v:.2f} GiB" for k, v in est.phases.items())
        print(f"  phases: {phases}; the peak is the {est.phase} phase")
    if not args.inference and est.setup.get("strategy") != "single":
        print(f"  per GPU, {est.setup['gpus']} GPUs with {est.setup['strategy']}")
    return 0
