"""train.autocast: where the trainer wraps its forward passes in autocast, and how the choice
reaches the trainer (the bf16 / fp16 flags, and Unsloth's switch read when its trainer is built)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from core.config import RunConfig
from core.settings import from_dict
from core.train.backends import autocast_choice, settle_precision, trainer_precision
from core.train.trainargs import training_args


def cfg(**train):
    lora = {"dropout": train.pop("dropout", 0.0)}
    return from_dict(RunConfig, {"model": {"name_or_path": "m"}, "data": {"mix_dir": "mix"},
                                 "lora": lora, "train": train})


def loaded(backend="unsloth", dtype="bfloat16"):
    return SimpleNamespace(backend=backend, dtype=dtype, device="cuda")


@pytest.mark.parametrize("backend, dtype, settings, expected", [
    # Unsloth's LoRA kernels cast the fp32 adapter to bf16 themselves: autocast adds only host work
    ("unsloth", "bfloat16", {}, False),
    # with dropout the adapters run in PEFT's own layers, outside those kernels
    ("unsloth", "bfloat16", {"dropout": 0.05}, True),
    # TRL's preference and RL trainers keep Unsloth's own precision set-up
    ("unsloth", "bfloat16", {"stage": "dpo"}, True),
    ("peft", "bfloat16", {}, True),
    # a float16 model trains with a loss scaler, which needs autocast, whatever was asked
    ("unsloth", "float16", {"autocast": "off"}, True),
    ("peft", "float32", {"autocast": "on"}, False),
    ("unsloth", "bfloat16", {"autocast": "on"}, True),
    ("peft", "bfloat16", {"autocast": "off"}, False),
])
def test_autocast_choice(backend, dtype, settings, expected):
    on, why = autocast_choice(cfg(**settings), loaded(backend, dtype))
    assert on is expected
    assert why.startswith(f"autocast: {'on' if expected else 'off'} (")


def test_the_choice_sets_the_trainers_precision_flags(tmp_path):
    def flags(c, ld):
        args = training_args(c, ld, tmp_path, has_eval=False, optim="adamw_torch", report_to=[])
        return args["bf16"], args["fp16"]

    assert flags(cfg(), loaded("peft", "bfloat16")) == (True, False)
    assert flags(cfg(autocast="off"), loaded("peft", "bfloat16")) == (False, False)
    assert flags(cfg(), loaded("unsloth", "bfloat16")) == (False, False)
    assert flags(cfg(), loaded("unsloth", "float16")) == (False, True)


@pytest.mark.parametrize("before", [None, "float32"])
def test_unsloths_switch_is_set_for_the_build_only(monkeypatch, before):
    for key in ("UNSLOTH_MIXED_PRECISION", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(key, raising=False)
    if before:
        monkeypatch.setenv("UNSLOTH_MIXED_PRECISION", before)
    with trainer_precision(cfg(), loaded()) as (autocast, _why):
        assert autocast is False and os.environ["UNSLOTH_MIXED_PRECISION"] == "bfloat16"
        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"  # what Unsloth's trainer writes while it builds
    assert os.environ.get("UNSLOTH_MIXED_PRECISION") == before
    assert "ACCELERATE_MIXED_PRECISION" not in os.environ
    # autocast on, or the PEFT backend: nothing of Unsloth's is touched
    for c, ld in ((cfg(autocast="on"), loaded()), (cfg(autocast="off"), loaded("peft"))):
        with trainer_precision(c, ld):
            assert os.environ.get("UNSLOTH_MIXED_PRECISION") == before


def test_evaluation_without_autocast_keeps_the_fp32_adapter():
    # Unsloth marks a run without autocast for a bf16 evaluation, which would cast the whole model,
    # adapter included, to bf16 before the final evaluation and so before the adapter is saved
    trainer = SimpleNamespace(args=SimpleNamespace(bf16_full_eval=True, fp16_full_eval=False))
    settle_precision(trainer, autocast=False)
    assert trainer.args.bf16_full_eval is False and trainer.args.fp16_full_eval is False
    trainer.args.bf16_full_eval = True
    settle_precision(trainer, autocast=True)
    assert trainer.args.bf16_full_eval is True
