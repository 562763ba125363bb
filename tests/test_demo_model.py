"""The offline demo model: builds deterministically, loads with transformers' Auto classes, and its
chat template renders exactly Qwen3's text (checked against Qwen3's own template)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

SYSTEM_REASONING_TOOL = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '{"temp": 20}'},
    {"role": "assistant", "content": "It is 20 degrees.", "reasoning_content": "The tool said 20."},
]

EXPECTED_SYSTEM_REASONING_TOOL = (
    "<|im_start|>system\nYou are helpful.\n\n# Tools\n\nYou may call one or more functions to assist "
    "with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nI should call the tool.\n</think>\n\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n{\"temp\": 20}\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n<think>\nThe tool said 20.\n</think>\n\nIt is 20 degrees.<|im_end|>\n"
)

# Conversations that exercise every branch of Qwen3's template.
CASES = {
    "plain": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    "system_reasoning_tool": SYSTEM_REASONING_TOOL,
    "multi_turn_history_loses_reasoning": [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2", "reasoning_content": "one plus one"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "two plus two"},
    ],
    "think_tags_inside_content": [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>\nBecause.\n</think>\n\nThat is why."},
    ],
    "two_tool_calls_string_arguments": [
        {"role": "user", "content": "Compare"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
            {"type": "function", "function": {"name": "b", "arguments": {"y": "中文"}}}]},
        {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "Done."},
    ],
    "system_later_and_chinese": [
        {"role": "user", "content": "你好"}, {"role": "system", "content": "请用中文"},
        {"role": "user", "content": "今天星期几？"},
    ],
    "tools_without_system": [{"role": "user", "content": "Weather?"}],
}


def test_exact_text_system_reasoning_tool(demo_tokenizer):
    text = demo_tokenizer.apply_chat_template(SYSTEM_REASONING_TOOL, tools=TOOLS, tokenize=False)
    assert text == EXPECTED_SYSTEM_REASONING_TOOL


def test_final_non_reasoning_turn_gets_empty_think_block(demo_tokenizer):
    text = demo_tokenizer.apply_chat_template(CASES["plain"], tokenize=False)
    assert text == ("<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")


def test_history_turns_lose_reasoning(demo_tokenizer):
    text = demo_tokenizer.apply_chat_template(CASES["multi_turn_history_loses_reasoning"], tokenize=False)
    assert "one plus one" not in text
    assert "<|im_start|>assistant\n2<|im_end|>" in text
    assert "<think>\ntwo plus two\n</think>\n\n4<|im_end|>" in text


@pytest.mark.parametrize("thinking,suffix", [(False, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
                                             (True, "<|im_start|>assistant\n"), (None, "<|im_start|>assistant\n")])
def test_generation_prompt_enable_thinking(demo_tokenizer, thinking, suffix):
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    text = demo_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                              add_generation_prompt=True, **kwargs)
    assert text == "<|im_start|>user\nHi<|im_end|>\n" + suffix


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("thinking", [None, False])
def test_matches_qwen3_official_template(demo_tokenizer, official_template, name, gen, thinking):
    tools = TOOLS if "tool" in name else None
    kwargs = {} if thinking is None else {"enable_thinking": thinking}
    ours = demo_tokenizer.apply_chat_template(CASES[name], tools=tools, tokenize=False,
                                              add_generation_prompt=gen, **kwargs)
    theirs = demo_tokenizer.apply_chat_template(CASES[name], tools=tools, tokenize=False,
                                                add_generation_prompt=gen, chat_template=official_template,
                                                **kwargs)
    assert ours == theirs


def test_generation_marks_cover_exactly_the_assistant_replies(demo_tokenizer):
    out = demo_tokenizer.apply_chat_template(SYSTEM_REASONING_TOOL, tools=TOOLS, tokenize=True,
                                             return_dict=True, return_assistant_tokens_mask=True)
    trained = demo_tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == (
        "<think>\nI should call the tool.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "<think>\nThe tool said 20.\n</think>\n\nIt is 20 degrees.<|im_end|>"
    )


def test_special_tokens_are_single_tokens(demo_tokenizer):
    for token in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>",
                  "</tool_call>", "<tool_response>", "</tool_response>"]:
        ids = demo_tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, token
    assert demo_tokenizer.eos_token == "<|im_end|>"
    assert demo_tokenizer.pad_token == "<|endoftext|>"
    text = "混合 English 与中文 🙂 text"
    assert demo_tokenizer.decode(demo_tokenizer(text).input_ids) == text  # byte-level: nothing lost


def _digest(folder):
    h = hashlib.sha256()
    for name in ["model.safetensors", "tokenizer.json"]:
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def test_cli_builds_loadable_deterministic_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ["a", "b"]:
        out = subprocess.run([sys.executable, "-m", "core", "demo-model", "--out", str(tmp_path / name),
                              "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["path"] == str(tmp_path / name)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.model_type == "qwen3"
    assert model.config.vocab_size == len(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == len(tok)


def test_cli_refuses_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    out = subprocess.run([sys.executable, "-m", "core", "demo-model", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not empty" in out.stdout + out.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
