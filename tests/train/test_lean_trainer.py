"""The trainers of the transformers + PEFT backend (core.train.lean): the same loss as TRL's,
without TRL's per-micro-batch host syncs, and transformers' per-micro-batch parameter count and
train-mode walk."""

from __future__ import annotations

import torch

from tests.train.conftest import run_config


def _prepared(tmp_path, learnable_model, facts_mix):
    from core.data.mixdir import read_mix_dir
    from core.train import backends, worker
    from core.train.data import tokenize

    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="lean", eval_steps=0)
    run_dir = tmp_path / "runs" / "lean"
    run_dir.mkdir(parents=True)
    loaded = backends.load(cfg, learnable_model, "peft")
    tok = tokenize(read_mix_dir(facts_mix)[0], loaded.tokenizer, cfg.train)
    return worker.prepare_trainer(cfg, run_dir, loaded, tok, None, echo=lambda m: None)


def _count_items(monkeypatch) -> list:
    calls = []
    original = torch.Tensor.item

    def item(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    return calls


def test_the_peft_trainer_computes_trls_loss_without_its_host_syncs(tmp_path, monkeypatch, learnable_model,
                                                                      facts_mix):
    from trl import SFTTrainer

    trainer = _prepared(tmp_path, learnable_model, facts_mix).trainer
    assert type(trainer).__name__ == "LeanSFTTrainer" and isinstance(trainer, SFTTrainer)
    assert type(trainer).compute_loss.__module__ == "core.train.lean"
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    n = int((batch["labels"][:, 1:] != -100).sum())
    trainer.model.train()
    calls = _count_items(monkeypatch)

    torch.manual_seed(0)
    stock = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=n)
    stock_items, stock_metrics = len(calls), {k: len(v) for k, v in trainer._metrics["train"].items() if v}
    trainer._metrics["train"].clear()
    calls.clear()
    torch.manual_seed(0)
    lean = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)

    assert torch.allclose(lean, stock)  # the same loss, so the same gradients
    # TRL reads entropy, accuracy and the token count back each micro-batch; the lean one none of them
    assert {"entropy", "mean_token_accuracy"} <= set(stock_metrics)
    assert stock_items - len(calls) == 3
    assert not any(trainer._metrics["train"].values())


def test_the_peft_trainer_counts_the_parameters_once(tmp_path, monkeypatch, learnable_model, facts_mix):
    from transformers import Trainer

    trainer = _prepared(tmp_path, learnable_model, facts_mix).trainer
    batch = next(iter(trainer.get_train_dataloader()))
    expected = Trainer.floating_point_ops(trainer, batch)
    counted = []
    original = trainer.model.num_parameters
    monkeypatch.setattr(trainer.model, "num_parameters", lambda **kw: counted.append(1) or original(**kw))
    assert [trainer.floating_point_ops(batch) for _ in range(5)] == [expected] * 5
    assert len(counted) == 1


def test_the_peft_trainer_sets_train_mode_once_until_evaluation_leaves_it(tmp_path, monkeypatch, learnable_model,
                                                                           facts_mix):
    trainer = _prepared(tmp_path, learnable_model, facts_mix).trainer
    root = trainer.model
    walks = []
    original = torch.nn.Module.train

    def train(self, mode=True):
        if self is root:
            walks.append(mode)
        return original(self, mode)

    monkeypatch.setattr(torch.nn.Module, "train", train)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets per step
    for _ in range(3):
        trainer.training_step(root, dict(batch))
    assert walks == [True]  # three micro-batches, one walk
    assert all(m.training for m in root.modules())
    assert "train" not in vars(root)  # nothing left shadowing the model's own method
    root.eval()  # what evaluation does
    walks.clear()
    trainer.training_step(root, dict(batch))
    assert walks == [True] and all(m.training for m in root.modules())

    # A GRPO rollout inside the micro-batch puts the model in eval mode and back: the way back is real.
    prepare = trainer._prepare_inputs

    def rollout_then_prepare(inputs):
        was = root.training
        root.eval()
        root.train(was)
        return prepare(inputs)

    monkeypatch.setattr(trainer, "_prepare_inputs", rollout_then_prepare)
    walks.clear()
    trainer.training_step(root, dict(batch))
    assert walks == [False, True] and all(m.training for m in root.modules())


def test_every_stage_trains_with_the_lean_trainer_on_peft_and_as_it_is_on_unsloth():
    from trl import DPOTrainer, GRPOTrainer, SFTTrainer

    from core.train import lean

    for base in (SFTTrainer, DPOTrainer, GRPOTrainer):
        assert lean.for_backend(base, "unsloth") is base
        cls = lean.for_backend(base, "peft", sft=base is SFTTrainer)
        assert issubclass(cls, base) and cls.__name__ == f"Lean{base.__name__}"
        assert ("compute_loss" in vars(cls)) is (base is SFTTrainer)  # only SFT's metrics are left out
