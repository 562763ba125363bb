"""The TrainingArguments every stage shares (sft through TRL's SFTConfig, dpo / orpo / grpo through
theirs), from the run's train section: defined once so a setting means the same in every stage."""

from __future__ import annotations

from pathlib import Path

from core.runfolder import RunFolder


def training_args(cfg, loaded, run_dir: Path, *, has_eval: bool, optim: str, report_to: list[str],
                  eval_batch: int | None = None) -> dict:
    """Keyword arguments of a TRL config: batch, schedule, optimizer, logging, saving, evaluation.
    ``optim`` and ``report_to``: what the worker resolved from train.optimizer and train.report_to."""
    from core.train.backends import autocast_choice

    t = cfg.train
    cuda = loaded.device == "cuda"
    autocast, _why = autocast_choice(cfg, loaded)
    eval_on = has_eval and t.eval_steps > 0
    return dict(
        output_dir=str(RunFolder(run_dir).checkpoints_dir),
        run_name=cfg.name,
        per_device_train_batch_size=t.micro_batch,
        per_device_eval_batch_size=eval_batch or t.micro_batch,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optim,
        seed=t.seed,
        data_seed=t.seed,
        bf16=autocast and loaded.dtype == "bfloat16",
        fp16=autocast and loaded.dtype == "float16",
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # the filter syncs the GPU every micro-step
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        report_to=report_to,
        disable_tqdm=True,  # progress goes to metrics.jsonl and one line per step in train.log
        include_num_input_tokens_seen="no",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient: no search per step
        log_level_replica="error",  # ranks other than 0 would repeat rank 0's warnings in train.log
        gradient_checkpointing=False,  # the backend set it up on the model (TRL's configs default to on)
    )
