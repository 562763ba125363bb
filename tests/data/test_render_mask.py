"""Rendering equals Qwen3's own template, and the loss mask covers exactly the assistant replies."""

from __future__ import annotations

import pytest

from core.data.conversation import Conversation, Message, ToolCall
from core.data.formats import to_conversation
from core.data.preview import preview_html, preview_text
from core.data.render import EMPTY_THINK, MaskOptions, masked_segments, render, render_batch, render_texts
from core.data.sources import Row, list_samples, open_source


def sample_conversations() -> list[Conversation]:
    out = []
    for name in list_samples():
        rows, _ = open_source(name)
        for item in rows:
            assert isinstance(item, Row), item
            out.append(to_conversation(item.data, item.origin)[0])
    return out


def trained_text(tokenizer, rendered) -> str:
    return tokenizer.decode([i for i, m in zip(rendered.input_ids, rendered.mask) if m])


def test_every_sample_row_converts():
    convs = sample_conversations()
    assert len(convs) >= 150
    assert any(c.tools for c in convs) and any(c.has_reasoning for c in convs)
    assert any(c.meta.get("expected_answer") for c in convs)


def test_rendered_samples_equal_qwen3_official_template(demo_tokenizer, official_template):
    convs = sample_conversations()
    ours = render_texts(convs, demo_tokenizer)
    for conv, text in zip(convs, ours):
        theirs = demo_tokenizer.apply_chat_template(conv.template_messages(), tools=conv.tools or None,
                                                    tokenize=False, chat_template=official_template)
        assert text == theirs, conv.origin


def test_think_tags_in_source_render_like_the_template_would(demo_tokenizer):
    raw = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nstep\n</think>\n\nA"}]
    conv = to_conversation({"messages": raw}, "x:1")[0]
    assert render_texts([conv], demo_tokenizer)[0] == demo_tokenizer.apply_chat_template(raw, tokenize=False)


def test_non_reasoning_reply_gets_qwen3_empty_think_block(demo_tokenizer):
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello!")])
    r = render(conv, demo_tokenizer)
    assert r.text == f"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n{EMPTY_THINK}Hello!<|im_end|>\n"


def test_mask_covers_exactly_the_assistant_replies(demo_tokenizer):
    conv = Conversation([
        Message("system", "Sys"), Message("user", "Weather?"),
        Message("assistant", "", reasoning="Call it.", tool_calls=[ToolCall("get_weather", {"city": "Oslo"})]),
        Message("tool", '{"t": 1}'), Message("assistant", "It is 1 degree.", reasoning="Tool said 1.")],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    r = render(conv, demo_tokenizer)
    assert trained_text(demo_tokenizer, r) == (
        "<think>\nCall it.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
        "<think>\nTool said 1.\n</think>\n\nIt is 1 degree.<|im_end|>")
    # The template's own generation marks agree with our mask.
    ref = demo_tokenizer.apply_chat_template(conv.template_messages(), tools=conv.tools, tokenize=True,
                                             return_dict=True, return_assistant_tokens_mask=True)
    assert ref["input_ids"] == r.input_ids and ref["assistant_masks"] == r.mask


def test_empty_think_block_training_is_an_option(demo_tokenizer):
    conv = Conversation([Message("user", "Hi"), Message("assistant", "Hello!")])
    with_block = render(conv, demo_tokenizer, options=MaskOptions(train_empty_think=True))
    without = render(conv, demo_tokenizer, options=MaskOptions(train_empty_think=False))
    assert trained_text(demo_tokenizer, with_block) == EMPTY_THINK + "Hello!<|im_end|>"
    assert trained_text(demo_tokenizer, without) == "Hello!<|im_end|>"
    everything = render(conv, demo_tokenizer, options=MaskOptions(assistant_only=False))
    assert all(everything.mask)


def test_render_batch_matches_single_render_and_truncates_only_when_asked(demo_tokenizer):
    convs = sample_conversations()[:20]
    batch = render_batch(convs, demo_tokenizer)
    assert [b.input_ids for b in batch] == [render(c, demo_tokenizer).input_ids for c in convs]
    long = render(convs[0], demo_tokenizer, max_len=10)
    assert long.n_tokens > 10 and not long.truncated
    cut = render(convs[0], demo_tokenizer, max_len=10, truncate=True)
    assert cut.n_tokens == 10 and cut.truncated


def test_preview_segments_rebuild_the_text_exactly_even_for_chinese(demo_tokenizer):
    conv = Conversation([Message("user", "你好，世界 🙂"), Message("assistant", "您好！有什么可以帮您？")])
    r = render(conv, demo_tokenizer)
    segments = masked_segments(r)
    assert "".join(p for p, _ in segments) == r.text
    assert [p for p, t in segments if t] == [EMPTY_THINK + "您好！有什么可以帮您？<|im_end|>"]


@pytest.mark.parametrize("opts", [MaskOptions(), MaskOptions(train_empty_think=False)])
def test_preview_html_highlights_the_trained_tokens(demo_tokenizer, opts):
    conv = Conversation([Message("user", "a < b?"), Message("assistant", "Yes & no.")])
    r = render(conv, demo_tokenizer, options=opts)
    page = preview_html(r, title="t")
    assert '<mark class="qt-train">' in page and "a &lt; b?" in page and "Yes &amp; no." in page
    assert ("&lt;think&gt;" in page.split('<mark class="qt-train">', 1)[1]) == opts.train_empty_think
    assert preview_text(r).count("⟦") == 1
