"""`python -m core mix FILE` with no flag: one data file of each shipped format is mixed alone and
measured with the real Qwen3 tokenizer (the counts equal what the raw tokenizer gives the rendered
text, and the rendered text is what the official template produces)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from core.cli import main
from core.data.tokenizer import qwen3_tokenizer_dir
from tests.conftest import ROOT

SAMPLES = ["alpaca_zh", "chat_en", "function_calling", "function_calling_sharegpt", "math_reasoning",
           "reasoning_tool_use"]


@pytest.fixture(scope="module")
def raw_qwen3():
    return Tokenizer.from_file(str(qwen3_tokenizer_dir() / "tokenizer.json"))


@pytest.mark.parametrize("sample", SAMPLES)
def test_mix_of_one_file_counts_real_qwen3_tokens(sample, tmp_path, capsys, raw_qwen3):
    src = ROOT / "presets" / "samples" / f"{sample}.jsonl"
    out = tmp_path / "mix"
    assert main(["mix", str(src), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer"]["vocab_size"] == 151_669
    assert summary["tokenizer"]["spec"] == "qwen3"
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and len(rows) == summary["total"]
    for row in rows:
        real = len(raw_qwen3.encode(row["text"], add_special_tokens=False).ids)
        assert row["n_tokens"] == real, row["conversation"]["origin"]


def test_text_output_names_the_tokenizer(capsys):
    assert main(["mix", str(ROOT / "presets" / "samples" / "chat_en.jsonl"), "--dry-run"]) == 0
    assert "tokens counted with the Qwen3 tokenizer (151,669 tokens)" in capsys.readouterr().out


def test_a_json_mix_config_is_still_a_config(tmp_path, capsys):
    cfg = tmp_path / "mix.json"
    cfg.write_text(json.dumps({"sources": [{"path": "samples/chat_en"}, {"path": "samples/chat_zh"}]}))
    assert main(["mix", str(cfg), "--dry-run", "--json"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)["sources"]] == ["chat_en", "chat_zh"]
