"""Builders shared by the chat and eval tests: a random LoRA adapter on the demo model, a saved mix,
and a run folder that looks like a finished training run (config.yaml, status.json, adapter/,
checkpoints/checkpoint-N, mix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.data.conversation import Conversation, Message


def make_adapter(base_path: Path, out: Path, *, seed: int = 0, r: int = 8) -> Path:
    """A PEFT LoRA adapter with random, non-zero A and B, so it really changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    peft_model = get_peft_model(model, LoraConfig(
        r=r, lora_alpha=2 * r, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                assert p.abs().sum() > 0
                p.mul_(4.0)  # large enough that greedy outputs surely change
    peft_model.save_pretrained(out)
    return out


def conv(user: str, answer: str, reasoning: str | None = None, **meta) -> Conversation:
    return Conversation(messages=[Message("user", user), Message("assistant", answer, reasoning=reasoning)],
                        source="test", origin="test", meta=meta)


def make_mix(out: Path, train: list[Conversation], evals: list[Conversation]) -> Path:
    from core.data.mixdir import write_mix_dir

    def rows(convs):
        return [{"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": c.source} for c in convs]

    return write_mix_dir(out, rows(train), rows(evals), {"sources": [{"name": "test"}], "seed": 0})


def make_run(runs_dir: Path, name: str, base_path: Path, adapter: Path, mix: Path, *,
             finished: bool = True, checkpoint_steps: tuple[int, ...] = (2,)) -> Path:
    """A run folder like the trainer leaves it (see core/train/runs.py)."""
    from core.config import DataConfig, ModelConfig, RunConfig
    from core.settings import dump_yaml

    run = runs_dir / name
    run.mkdir(parents=True)
    cfg = RunConfig(name=name, runs_dir=str(runs_dir), model=ModelConfig(name_or_path="demo", method="lora"),
                    data=DataConfig(mix_dir=str(mix)))
    dump_yaml(cfg, run / "config.yaml")
    (run / "status.json").write_text(json.dumps({
        "state": "done" if finished else "running", "pid": None, "model": "demo", "method": "lora",
        "model_path": str(base_path), "step": max(checkpoint_steps or (0,))}), encoding="utf-8")
    for step in checkpoint_steps:
        ck = run / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(adapter, ck)
        (ck / "trainer_state.json").write_text("{}", encoding="utf-8")
    if finished:
        shutil.copytree(adapter, run / "adapter")
    return run
