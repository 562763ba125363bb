"""train.packing = bucket: similar lengths side by side, as many rows as fit the token budget, and the
Hugging Face Trainer really draws these batches (also after a resume's skip)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.train.batching import bucket_batches
from tests.train.conftest import run_config


def mixed_lengths(n=400, seed=0):
    rng = random.Random(seed)
    return [rng.randint(64, 320) if rng.random() < 0.5 else rng.randint(820, 2032) for _ in range(n)]


def test_every_row_once_and_every_batch_within_the_budget():
    lengths = mixed_lengths()
    batches = bucket_batches(lengths, micro_batch=2, max_seq_len=2048, seed=1)
    rows = sorted(i for b in batches for i in b)
    assert rows == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 2 * 2048
    assert bucket_batches(lengths, 2, 2048, seed=1) == batches  # seeded
    assert bucket_batches(lengths, 2, 2048, seed=2) != batches


def test_buckets_fill_the_budget_where_padded_pairs_do_not():
    lengths = mixed_lengths()
    batches = bucket_batches(lengths, micro_batch=2, max_seq_len=2048, seed=1)
    pairs = [[i, i + 1] for i in range(0, len(lengths), 2)]
    padded = sum(lengths) / sum(2 * max(lengths[i] for i in p) for p in pairs)
    real_over_padded = sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 0.75 and real_over_padded > 0.95  # padding: about a third of positions -> a few %
    assert sum(lengths) / (len(batches) * 2 * 2048) > 0.8  # most batches hold close to 4096 tokens
    short = [len(b) for b in batches if max(lengths[i] for i in b) <= 320]
    assert sorted(short)[len(short) // 2] >= 12  # a short chat turn shares its batch with many peers


@pytest.fixture(scope="module")
def mixed_mix(tmp_path_factory) -> Path:
    from core.data.conversation import Conversation, Message
    from core.data.mixdir import write_mix_dir

    rng = random.Random(3)
    words = ["the", "model", "learns", "to", "answer", "each", "question", "from", "the", "facts", "given",
             "so", "that"]
    out = []
    for i in range(40):
        n = rng.choice([3, 5, 8, 60, 90, 120])
        c = Conversation([Message("user", f"Question {i}?"),
                          Message("assistant", " ".join(rng.choice(words) for _ in range(n)))], source="mixed")
        out.append({"conversation": c.to_json(), "text": "", "n_tokens": 0, "source": "mixed"})
    return write_mix_dir(tmp_path_factory.mktemp("mixes") / "mixed", out, [], {"sources": [{"name": "mixed"}]})


def test_the_trainer_draws_the_buckets_and_a_resume_skips_exactly(tmp_path, learnable_model, mixed_mix):
    from accelerate import skip_first_batches

    from core.data.mixdir import read_mix_dir
    from core.train import backends, worker
    from core.train.data import tokenize

    cfg = run_config(learnable_model, mixed_mix, tmp_path / "runs", name="bk", packing="bucket", micro_batch=2,
                     max_seq_len=256, eval_steps=0)
    run_dir = tmp_path / "runs" / "bk"
    run_dir.mkdir(parents=True)
    loaded = backends.load(cfg, learnable_model, "peft")
    train, _, _ = read_mix_dir(mixed_mix)
    tok = tokenize(train, loaded.tokenizer, cfg.train)
    prepared = worker.prepare_trainer(cfg, run_dir, loaded, tok, None, echo=lambda m: None)
    assert prepared.packing == "bucket"
    loader = prepared.trainer.get_train_dataloader()
    batches = list(loader)
    expected = bucket_batches([len(x) for x in prepared.trainer.train_dataset["input_ids"]], 2, 256, cfg.train.seed)
    assert len(loader) == len(batches) == len(expected) < tok.rows / 2  # fewer, fuller steps than pairs
    assert [b["input_ids"].shape[0] for b in batches] == [len(b) for b in expected]
    assert max(b["input_ids"].numel() for b in batches) <= 2 * 256
    real = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert real == tok.trained_tokens  # every trained token of every row, once
    # What Trainer does on resume: skip the batches already trained, then the rest in the same order.
    rest = list(skip_first_batches(loader, 3))
    assert [b["input_ids"].tolist() for b in rest] == [b["input_ids"].tolist() for b in batches[3:]]
    # The next epoch: the same batches in another order (Trainer calls set_epoch on the loader).
    loader.set_epoch(1)
    again = [b["input_ids"].tolist() for b in loader]
    first = [b["input_ids"].tolist() for b in batches]
    assert again != first and sorted(map(str, again)) == sorted(map(str, first))


@pytest.mark.slow
def test_a_bucket_run_learns(tmp_path, monkeypatch, learnable_model, facts_mix):
    from core.train import runs, worker

    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")
    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="bk-learn", packing="bucket",
                     max_steps=30, eval_steps=0, save_steps=100)
    assert worker.run(cfg) == 0
    run_dir = tmp_path / "runs" / "bk-learn"
    st = runs.read_status(run_dir)
    assert st["state"] == "done" and st["packing"] == "bucket" and st["step"] == 30
    losses = [m["loss"] for m in runs.read_metrics(run_dir) if m["loss"] is not None]
    assert losses[-1] <= losses[0] / 2, losses


def test_packing_without_a_varlen_kernel_says_so(tmp_path, monkeypatch, learnable_model, mixed_mix):
    """On Unsloth without flash-attn, xformers or torch 2.12's varlen_attn, packed segments cost speed;
    the run says so in its notices (with the code the GUI translates)."""
    import dataclasses

    from core.data.mixdir import read_mix_dir
    from core.train import backends, runs, worker
    from core.train.data import tokenize

    cfg = run_config(learnable_model, mixed_mix, tmp_path / "runs", name="pk", packing="packing", eval_steps=0)
    run_dir = tmp_path / "runs" / "pk"
    run_dir.mkdir(parents=True)
    loaded = backends.load(cfg, learnable_model, "peft")
    tok = tokenize(read_mix_dir(mixed_mix)[0], loaded.tokenizer, cfg.train)
    worker.prepare_trainer(cfg, run_dir, dataclasses.replace(loaded, backend="unsloth"), tok, None, echo=print)
    assert runs.read_status(run_dir).get("notices") is None  # torch 2.14 has the kernel: nothing to say

    monkeypatch.setattr(backends, "varlen_attention_available", lambda: False)
    worker.prepare_trainer(cfg, run_dir, dataclasses.replace(loaded, backend="unsloth"), tok, None, echo=print)
    st = runs.read_status(run_dir)
    assert "own attention call" in st["notices"][-1] and "bucket" in st["notices"][-1]
    assert st["notice_codes"][-1]["code"] == "packing_no_varlen"
