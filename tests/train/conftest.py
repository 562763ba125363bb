"""Fixtures for the trainer tests: a learnable copy of the demo model and a tiny memorisation mix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FACTS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
]


@pytest.fixture(scope="session")
def learnable_model(tmp_path_factory, demo_model_path) -> Path:
    """The demo model with its (tied) embeddings scaled x10.

    The demo's random init (std 0.02, tied embeddings, hidden 64) caps every logit at about
    |h| * |e| = 8 * 0.16 = 1.3 whatever the layers do, so no LoRA on the linear layers can bring the
    loss far below ln(1024) = 6.9; larger embeddings lift that cap and memorisation becomes visible.
    The base weights stay frozen exactly as in any run."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("models") / "demo-x10"
    shutil.copytree(demo_model_path, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)
    model.save_pretrained(out)
    return out


def write_facts_mix(folder: Path, rows=FACTS, eval_rows=FACTS[:2]) -> Path:
    from core.data.conversation import Conversation, Message
    from core.data.mixdir import write_mix_dir

    def shape(pairs, tag):
        out = []
        for i, (q, a) in enumerate(pairs):
            c = Conversation([Message("user", q), Message("assistant", a)], source="facts", origin=f"{tag}:{i}")
            out.append({"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": "facts"})
        return out

    return write_mix_dir(folder, shape(rows, "train"), shape(eval_rows, "eval"), {"sources": [{"name": "facts"}]})


@pytest.fixture(scope="session")
def facts_mix(tmp_path_factory) -> Path:
    return write_facts_mix(tmp_path_factory.mktemp("mixes") / "facts")


def run_config(model: Path | str, mix: Path, runs_dir: Path, name: str = "", **train):
    """A RunConfig for a short CPU run (settings checked as a YAML file's would be)."""
    from core.config import RunConfig
    from core.settings import from_dict

    settings = {"max_steps": 30, "micro_batch": 4, "grad_accum": 1, "learning_rate": 5e-3, "warmup_steps": 0,
                "lr_scheduler": "constant", "max_seq_len": 256, "save_steps": 10, "eval_steps": 10}
    settings.update(train)
    return from_dict(RunConfig, {
        "name": name, "runs_dir": str(runs_dir),
        "model": {"name_or_path": str(model), "method": "lora"},
        "lora": {"r": 8, "alpha": 16},
        "train": settings,
        "data": {"mix_dir": str(mix)},
    })
