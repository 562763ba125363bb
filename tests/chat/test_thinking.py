"""Reasoning vs answer on hand-made Qwen3 outputs, and prompts built with enable_thinking."""

from __future__ import annotations

import pytest

from core.chat.thinking import build_prompt, has_reasoning, history_message, prompt_opens_think, split_reasoning


def test_complete_thinking_reply():
    s = split_reasoning("<think>\nLet me add 2 and 2.\nThat is 4.\n</think>\n\nThe answer is 4.")
    assert s.reasoning == "Let me add 2 and 2.\nThat is 4."
    assert s.answer == "The answer is 4."
    assert s.has_reasoning and not s.in_reasoning


def test_non_thinking_reply_has_no_reasoning():
    s = split_reasoning("The answer is 4.")
    assert s.reasoning is None and s.answer == "The answer is 4." and not s.has_reasoning


def test_empty_think_block_is_not_reasoning():
    s = split_reasoning("<think>\n\n</think>\n\nHi there.")
    assert s.reasoning == "" and s.answer == "Hi there." and not s.has_reasoning


def test_reply_that_starts_inside_the_think_block():
    # Templates that open <think> in the prompt: the reply holds only the closing tag.
    text = "I should greet.\n</think>\n\nHello!"
    assert split_reasoning(text, started_in_think=True).reasoning == "I should greet."
    # A lone closing tag is read the same way even without the hint (Qwen3's parsers do this).
    assert split_reasoning(text) == split_reasoning(text, started_in_think=True)


@pytest.mark.parametrize("cut", range(0, 60))
def test_partial_stream_never_shows_a_tag(cut):
    full = "<think>\nStep one.\n</think>\n\nDone <b>now</b>."
    s = split_reasoning(full[:cut], partial=True)
    assert "<think" not in s.answer and "</think" not in s.answer
    assert "<" not in (s.reasoning or "")  # no half-written closing tag in the reasoning either
    if cut >= full.index("</think>") + len("</think>"):
        assert not s.in_reasoning and s.reasoning == "Step one."
    elif cut > len("<think>"):
        assert s.in_reasoning
        assert "Step one.".startswith(s.reasoning.strip()) or s.reasoning.strip().startswith("Step one.")


def test_partial_tag_held_back_at_answer_end():
    assert split_reasoning("Hello <thi", partial=True).answer == "Hello "
    assert split_reasoning("Hello <thi").answer == "Hello <thi"  # a finished reply keeps its text


def test_thinking_off_violation_detected():
    # thinking off: the prompt already holds the empty block; a reply that thinks again is a violation
    assert has_reasoning("<think>\nHmm, let me think.\n</think>\n\n4")
    assert not has_reasoning("4")
    # text before a think block is kept in the answer
    s = split_reasoning("Sure. <think>\nwait\n</think>\n\nIt is 4.")
    assert s.reasoning == "wait" and s.answer.startswith("Sure.") and s.answer.endswith("It is 4.")


def test_history_message_drops_reasoning():
    m = history_message("<think>\nsecret plan\n</think>\n\nHello!")
    assert m.role == "assistant" and m.content == "Hello!"


def test_build_prompt_thinking_switch(demo_tokenizer):
    msgs = [{"role": "user", "content": "Hi"}]
    on = build_prompt(demo_tokenizer, msgs, thinking=True)
    off = build_prompt(demo_tokenizer, msgs, thinking=False)
    assert on.endswith("<|im_start|>assistant\n")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_think(on) and not prompt_opens_think(off)
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")


def test_past_turns_are_sent_without_reasoning(demo_tokenizer):
    msgs = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>\nSECRET REASONING\n</think>\n\nHello!"},
            {"role": "user", "content": "How are you?"}]
    prompt = build_prompt(demo_tokenizer, msgs, thinking=True, system="Be brief.")
    assert "SECRET REASONING" not in prompt
    assert "Hello!" in prompt and prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_build_prompt_needs_a_user_turn_last(demo_tokenizer):
    with pytest.raises(ValueError, match="user message"):
        build_prompt(demo_tokenizer, [{"role": "assistant", "content": "x"}], thinking=True)


def test_official_qwen3_template_agrees(official_template, demo_tokenizer):
    """Our prompt building gives the same text with Qwen3's own template."""
    import copy

    tok = copy.copy(demo_tokenizer)
    tok.chat_template = official_template
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nHello"},
            {"role": "user", "content": "Again"}]
    for thinking in (True, False):
        assert build_prompt(tok, msgs, thinking=thinking) == build_prompt(demo_tokenizer, msgs, thinking=thinking)
