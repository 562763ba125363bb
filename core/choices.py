"""Every fixed choice list, defined once: settings, CLI flags, GUI dropdowns and docs read these.

A leaf module (no QwenTune imports), so the models area, the estimator, the exporter and the
settings dataclasses can all use it without import cycles.
"""

from __future__ import annotations

# Fine-tuning methods: lora trains on 16-bit base weights, qlora on 4-bit ones.
METHODS = ("lora", "qlora")
# QLoRA base weights (model.quant): auto, Unsloth's dynamic 4-bit, plain bnb 4-bit, or nf4 on load.
QUANTS = ("auto", "dynamic4", "bnb4", "nf4")
# What `models get --quant` also accepts: 'none' asks for the original 16-bit weights.
DOWNLOAD_QUANTS = (*QUANTS, "none")
# Which catalog checkpoint a method + quant trains from (presets/models.yaml's keys per hub).
CHECKPOINT_KINDS = ("original", "dynamic4", "bnb4")
HUBS = ("hf", "modelscope")
BACKENDS = ("auto", "unsloth", "peft")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# `python -m core export --format` and the Evaluate tab's export panel.
EXPORT_FORMATS = ("lora", "merged16", "merged4", "gguf")
GGUF_QUANTS = ("q8_0", "f16", "bf16", "q4_k_m", "q5_k_m")
# train.stage: supervised fine-tuning, then the preference and reinforcement stages through TRL.
STAGES = ("sft", "dpo", "orpo", "grpo")
# train.strategy: one process on one GPU, or one process per GPU through accelerate.
STRATEGIES = ("single", "ddp", "fsdp")
# rl.rewards: the built-in GRPO rewards (core.train.rewards); a user's own comes from rl.reward_file.
REWARDS = ("answer", "format", "length")
# rl.rollout: how GRPO generates completions. chat: the chat engine's batched decode; unsloth: Unsloth's
# CUDA-graph decode (unsloth backend); trl: TRL's own model.generate; vllm: vLLM colocated (transformers +
# PEFT backend); auto: vllm where it can run, else unsloth on the unsloth backend, else chat.
ROLLOUTS = ("auto", "chat", "unsloth", "trl", "vllm")
# mix.kind: what a mix's rows are for. sft: conversations to imitate; preference: a prompt with a
# chosen and a rejected reply (dpo, orpo); prompt: a prompt with a reference answer (grpo).
MIX_KINDS = ("sft", "preference", "prompt")
# The kind of mix each training stage reads.
STAGE_MIX_KIND = {"sft": "sft", "dpo": "preference", "orpo": "preference", "grpo": "prompt"}
