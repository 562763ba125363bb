"""The trainer checks the mix against the model: a mix measured with the demo tokenizer, trained on
a model whose tokenizer is the real Qwen3 one, is re-measured (and says so) when the mix made no
decision by token count, and refused with the rebuild command when it did.

The model is a tiny random Qwen3 saved with the real Qwen3 tokenizer (151,669 tokens), so the run
really trains with it on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import MixConfig, SourceConfig
from core.train import runs
from tests.train.conftest import FACTS, run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_tokenizer_model(tmp_path_factory) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from core.data.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("qwen3-real-tok") / "model"
    tokenizer = load_tokenizer("qwen3")
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                         max_position_embeddings=512, eos_token_id=151645, pad_token_id=151643,
                         bos_token_id=None)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def demo_measured_mix(tmp_path: Path, max_seq_len: int) -> Path:
    """The four facts (and one long row) as a messages file, mixed with the demo tokenizer."""
    from core.data.mix import build_mix

    src = tmp_path / "facts.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS]
    rows.append({"messages": [{"role": "user", "content": "Tell me everything. " * 20},
                              {"role": "assistant", "content": "Everything. " * 20}]})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = MixConfig(sources=[SourceConfig(path=str(src))], tokenizer="demo", max_seq_len=max_seq_len, shuffle=False)
    out = tmp_path / "mix"
    build_mix(cfg, None, out)
    return out


def _train(cfg, monkeypatch):
    from core.train import worker

    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")
    rc = worker.run(cfg)
    run_dir = Path(cfg.runs_dir) / cfg.name
    return rc, runs.read_status(run_dir), run_dir


def test_a_mix_without_length_decisions_is_remeasured_and_trains(tmp_path, monkeypatch, real_tokenizer_model,
                                                                  capsys):
    mix = demo_measured_mix(tmp_path, max_seq_len=2048)  # nothing dropped by the demo counts
    manifest = json.loads((mix / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tokenizer"]["vocab_size"] == 1024 and manifest["train_rows"] == 5
    # At 40 tokens the long row no longer fits with the real tokenizer either: one new drop.
    cfg = run_config(real_tokenizer_model, mix, tmp_path / "runs", name="remeasure", max_steps=2,
                     max_seq_len=40, eval_steps=0, save_steps=50, micro_batch=2)
    rc, status, run_dir = _train(cfg, monkeypatch)
    assert rc == 0, status
    assert status["state"] == "done"
    codes = [c for c in status["notice_codes"] if c and c["code"] == "mix_remeasured"]
    assert codes, status["notices"]
    params = codes[0]["params"]
    assert params["mix_tokenizer"] == "the demo tokenizer (1,024 tokens)"
    assert "151,669" in params["model_tokenizer"]
    assert params["too_long"] == "1" and params["rows"] == "5" and params["max_len"] == "40"
    assert status["data"]["dropped_too_long"] == 1 and status["data"]["rows"] == 4
    out = capsys.readouterr()
    assert "re-measured" in out.out + out.err


def test_a_mix_that_dropped_rows_by_another_tokenizer_is_refused(tmp_path, monkeypatch, real_tokenizer_model):
    mix = demo_measured_mix(tmp_path, max_seq_len=64)  # the demo tokenizer drops the long row
    manifest = json.loads((mix / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["train_rows"] == 4
    cfg = run_config(real_tokenizer_model, mix, tmp_path / "runs", name="refused", max_steps=2)
    rc, status, _run_dir = _train(cfg, monkeypatch)
    assert rc == 2 and status["state"] == "failed" and status["resumable"] is False
    error = status["error"]
    assert "data.mix_dir" in error and "the demo tokenizer (1,024 tokens)" in error and "151,669" in error
    assert "longer than max_seq_len x1" in error
    assert f"--tokenizer {real_tokenizer_model}" in error and "--force" in error
    assert status.get("step", 0) == 0


def test_a_mix_measured_with_the_same_tokenizer_trains_without_a_notice(tmp_path, monkeypatch, demo_model_path):
    mix = demo_measured_mix(tmp_path, max_seq_len=64)  # dropped rows, but by the model's own tokenizer
    cfg = run_config(demo_model_path, mix, tmp_path / "runs", name="same", max_steps=1, eval_steps=0)
    rc, status, _run_dir = _train(cfg, monkeypatch)
    assert rc == 0, status
    assert not [c for c in status["notice_codes"] if c and c["code"].startswith("mix_")]
