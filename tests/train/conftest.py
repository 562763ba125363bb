"""Fixtures for the trainer tests: a learnable copy of the demo model and a tiny memorisation mix."""

from __future__ import annotations

from pathlib import Path

import pytest

FACTS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
]


@pytest.fixture(scope="session")
def learnable_model(demo_model_path) -> Path:
    """The demo model itself: its recipe (initializer_range 0.2) lets LoRA memorise, see core/demo.py."""
    return demo_model_path


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


def run_config(model: Path | str, mix: Path, runs_dir: Path, name: str = "", rl: dict | None = None, **train):
    """A RunConfig for a short CPU run (settings checked as a YAML file's would be); ``train`` and
    ``rl`` override the train and rl sections."""
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
        "rl": rl or {},
        "data": {"mix_dir": str(mix)},
    })
