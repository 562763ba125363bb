"""Preference and prompt rows: the record carries the rejected reply, and rendering splits a row into
prompt + reply so that prompt + chosen is exactly the SFT rendering (real Qwen3 tokenizer)."""

from __future__ import annotations

import pytest

from core.data.conversation import Conversation, Message, ToolCall
from core.data.render import (
    EMPTY_THINK,
    PreferenceText,
    RenderError,
    render_preference,
    render_prompt,
    render_text,
    render_texts,
)


@pytest.fixture(scope="module")
def qwen3():
    from core.data.tokenizer import load_tokenizer

    return load_tokenizer("qwen3")


def pref(chosen: Message, rejected: Message, *, system: str | None = None, history=()) -> Conversation:
    msgs = [Message("system", system)] if system else []
    msgs += [*history, Message("user", "What is 2 + 3?"), chosen]
    return Conversation(msgs, rejected=rejected, origin="p.jsonl:1", meta={"note": "x"})


def sft_text(conv: Conversation, tok) -> str:
    return render_texts([conv], tok)[0]


def test_rejected_survives_to_json_and_back():
    conv = pref(Message("assistant", "5", reasoning="2+3=5"), Message("assistant", "6"))
    back = Conversation.from_json(conv.to_json())
    assert back.rejected == Message("assistant", "6")
    assert back.messages == conv.messages and back.meta == conv.meta and back.origin == conv.origin
    assert back.kind == "preference"
    plain = Conversation([Message("user", "Q"), Message("assistant", "A")])
    assert "rejected" not in plain.to_json()
    assert Conversation.from_json(plain.to_json()).rejected is None
    assert plain.kind == "sft"
    assert Conversation([Message("user", "Q")]).kind == "prompt"


def test_no_reasoning_puts_the_empty_think_block_in_the_prompt(qwen3):
    conv = pref(Message("assistant", "5"), Message("assistant", "6"), system="Be brief.")
    p = render_preference(conv, qwen3)
    assert isinstance(p, PreferenceText)
    assert p.prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                        "<|im_start|>assistant\n" + EMPTY_THINK)
    assert p.chosen == "5<|im_end|>\n" and p.rejected == "6<|im_end|>\n"
    # The prompt is what the template writes for a non-thinking generation.
    assert p.prompt == render_text(Conversation(conv.messages[:-1]), qwen3, add_generation_prompt=True,
                                   enable_thinking=False)
    assert p.prompt + p.chosen == sft_text(conv, qwen3)
    assert p.prompt + p.rejected == sft_text(conv.with_reply(conv.rejected), qwen3)


def test_reasoning_keeps_the_think_block_in_each_reply(qwen3):
    conv = pref(Message("assistant", "5", reasoning="2 + 3 = 5."), Message("assistant", "6", reasoning="Guess."))
    p = render_preference(conv, qwen3)
    assert p.prompt.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert p.prompt == render_text(Conversation(conv.messages[:-1]), qwen3, add_generation_prompt=True)
    assert p.chosen == "<think>\n2 + 3 = 5.\n</think>\n\n5<|im_end|>\n"
    assert p.rejected == "<think>\nGuess.\n</think>\n\n6<|im_end|>\n"
    assert p.prompt + p.chosen == sft_text(conv, qwen3)
    assert p.prompt + p.rejected == sft_text(conv.with_reply(conv.rejected), qwen3)


@pytest.mark.parametrize("chosen_reasons", [True, False])
def test_one_reply_with_reasoning_gives_the_other_an_empty_think_block(qwen3, chosen_reasons):
    with_r, without = Message("assistant", "5", reasoning="Add."), Message("assistant", "6")
    conv = pref(with_r, without) if chosen_reasons else pref(without, with_r)
    p = render_preference(conv, qwen3)
    assert p.prompt.endswith("<|im_start|>assistant\n")
    plain = p.rejected if chosen_reasons else p.chosen
    assert plain == EMPTY_THINK + "6<|im_end|>\n"
    assert p.prompt + p.chosen == sft_text(conv, qwen3)
    assert p.prompt + p.rejected == sft_text(conv.with_reply(conv.rejected), qwen3)


def test_inline_think_tags_count_as_reasoning(qwen3):
    conv = pref(Message("assistant", "<think>\nAdd them.\n</think>\n\n5"), Message("assistant", "6"))
    p = render_preference(conv, qwen3)
    assert p.chosen == "<think>\nAdd them.\n</think>\n\n5<|im_end|>\n"
    assert p.prompt + p.chosen == sft_text(conv, qwen3)


def test_multi_turn_and_tools_split_at_the_last_reply(qwen3):
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    history = [Message("user", "Hi"), Message("assistant", "Hello.", reasoning="Greet back.")]
    conv = Conversation(
        [*history, Message("user", "2 + 3?"),
         Message("assistant", "", tool_calls=[ToolCall("add", {"a": 2, "b": 3})]), Message("tool", "5"),
         Message("assistant", "It is 5.")],
        tools=[tool], rejected=Message("assistant", "It is 6."))
    p = render_preference(conv, qwen3)
    assert "<tools>" in p.prompt and "<tool_response>\n5\n</tool_response>" in p.prompt
    assert "Greet back." not in p.prompt  # Qwen3 drops reasoning before the last question
    assert p.prompt + p.chosen == sft_text(conv, qwen3)
    assert p.prompt + p.rejected == sft_text(conv.with_reply(conv.rejected), qwen3)


def test_prompt_and_replies_tokenize_at_the_boundary(qwen3):
    """Tokenizing prompt and reply apart (as preference trainers do) gives the ids of the whole text."""
    for conv in (pref(Message("assistant", "5"), Message("assistant", "six")),
                 pref(Message("assistant", "五", reasoning="二加三。"), Message("assistant", "六"))):
        p = render_preference(conv, qwen3)
        for reply in (p.chosen, p.rejected):
            apart = qwen3(p.prompt, add_special_tokens=False)["input_ids"] + \
                qwen3(reply, add_special_tokens=False)["input_ids"]
            assert apart == qwen3(p.prompt + reply, add_special_tokens=False)["input_ids"]


def test_rows_that_are_not_preference_rows_are_refused(qwen3):
    with pytest.raises(RenderError, match="no rejected"):
        render_preference(Conversation([Message("user", "Q"), Message("assistant", "A")]), qwen3)
    with pytest.raises(RenderError, match="p.jsonl:1"):
        render_preference(Conversation([Message("user", "Q")], rejected=Message("assistant", "B"),
                                       origin="p.jsonl:1"), qwen3)
    with pytest.raises(RenderError, match="user or tool turn"):
        render_preference(Conversation([Message("user", "Q"), Message("assistant", "A"), Message("assistant", "C")],
                                       rejected=Message("assistant", "B")), qwen3)


def test_render_prompt_ends_with_the_generation_prompt(qwen3):
    conv = Conversation([Message("system", "Reason, then answer."), Message("user", "What is 17 + 25?")],
                        meta={"expected_answer": "42"})
    on = render_prompt(conv, qwen3)
    assert on == ("<|im_start|>system\nReason, then answer.<|im_end|>\n<|im_start|>user\nWhat is 17 + 25?"
                  "<|im_end|>\n<|im_start|>assistant\n")
    assert on == qwen3.apply_chat_template(conv.template_messages(), tokenize=False, add_generation_prompt=True)
    off = render_prompt(conv, qwen3, thinking=False)
    assert off == on + EMPTY_THINK
    # A row that still carries its reply is prompted at its question.
    answered = Conversation([*conv.messages, Message("assistant", "42", reasoning="17+25")])
    assert render_prompt(answered, qwen3) == on
    with pytest.raises(RenderError, match="no user turn"):
        render_prompt(Conversation([Message("system", "S")]), qwen3)


def test_mix_folder_keeps_rejected_meta_and_kind(tmp_path):
    from core.data.mixdir import mix_kind, read_manifest, read_mix_dir, write_mix_dir
    from core.settings import ConfigError

    row = pref(Message("assistant", "5", reasoning="Add."), Message("assistant", "6"))
    prompt = Conversation([Message("user", "What is 17 + 25?")], meta={"expected_answer": "42"}, origin="m:3")
    write_mix_dir(tmp_path / "p", [{"conversation": row.to_json(), "text": "", "n_tokens": 9, "source": "p"}], [],
                  {"kind": "preference"})
    write_mix_dir(tmp_path / "g", [{"conversation": prompt.to_json(), "text": "", "n_tokens": 9, "source": "m"}],
                  [], {"kind": "prompt"})
    train, _, manifest = read_mix_dir(tmp_path / "p")
    assert train[0].rejected == Message("assistant", "6") and train[0].messages == row.messages
    assert mix_kind(manifest) == "preference"
    train, _, manifest = read_mix_dir(tmp_path / "g")
    assert train[0].meta == {"expected_answer": "42"} and train[0].kind == "prompt"
    assert mix_kind(manifest) == "prompt"
    assert mix_kind({}) == "sft"
    with pytest.raises(ConfigError, match="unknown mix kind"):
        mix_kind(dict(read_manifest(tmp_path / "g"), kind="ranking"))
