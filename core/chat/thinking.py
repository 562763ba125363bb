"""Qwen3's thinking mode: build prompts with ``enable_thinking`` and split reasoning from the answer.

A Qwen3 reply in thinking mode reads ``<think>\\nreasoning\\n</think>\\n\\nanswer``. With thinking off,
the chat template itself writes an empty ``<think>\\n\\n</think>\\n\\n`` into the prompt, so a reply
that obeys holds no think block at all. Some templates (Qwen3-2507 thinking models) put the opening
``<think>`` into the prompt, so the reply starts inside the reasoning; :func:`prompt_opens_think`
tells which case applies. :func:`split_reasoning` works on finished replies and on a stream cut
anywhere, even inside a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.data.conversation import Conversation, Message

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Split:
    reasoning: str | None  # None: no think block at all; "": an empty one
    answer: str
    in_reasoning: bool = False  # the stream is still inside an unclosed think block

    @property
    def has_reasoning(self) -> bool:
        return bool(self.reasoning and self.reasoning.strip())

    def to_json(self) -> dict:
        return {"reasoning": self.reasoning or "", "answer": self.answer}


def _trailing_tag_prefix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of ``tag`` that ``text`` ends with (a tag cut by streaming)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def split_reasoning(text: str, *, started_in_think: bool = False, partial: bool = False) -> Split:
    """Split a reply into (reasoning, answer).

    ``started_in_think``: the prompt already opened the think block. ``partial``: ``text`` is a stream
    that may stop in the middle of a tag; a half-written tag is held back instead of shown as text.
    A ``</think>`` without an opening tag also closes reasoning, the way Qwen3's parsers read it.
    """
    if started_in_think:
        text = THINK_OPEN + text
    open_at = text.find(THINK_OPEN)
    close_at = text.find(THINK_CLOSE)
    if open_at < 0 and close_at >= 0:
        reasoning = text[:close_at]
        return Split(reasoning.strip(), text[close_at + len(THINK_CLOSE):].lstrip())
    if open_at < 0:
        answer = text
        if partial:
            answer = answer[:len(answer) - _trailing_tag_prefix(answer, THINK_OPEN)]
        return Split(None, answer)
    before = text[:open_at]
    body = text[open_at + len(THINK_OPEN):]
    close_at = body.find(THINK_CLOSE)
    if close_at < 0:
        if partial:
            body = body[:len(body) - _trailing_tag_prefix(body, THINK_CLOSE)]
        return Split(body.strip("\n").lstrip(), before.strip(), in_reasoning=True)
    reasoning = body[:close_at].strip()
    after = body[close_at + len(THINK_CLOSE):].lstrip()
    answer = (before.strip() + "\n\n" + after) if before.strip() else after
    return Split(reasoning, answer)


def has_reasoning(reply: str, *, started_in_think: bool = False) -> bool:
    """True when the reply carries non-empty reasoning (what the thinking-mode check counts)."""
    return split_reasoning(reply, started_in_think=started_in_think).has_reasoning


def prompt_opens_think(prompt: str) -> bool:
    """True when the generation prompt ends inside an open think block (the reply starts reasoning)."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_OPEN)


def history_message(answer: str) -> Message:
    """A past assistant turn as it is sent back to the model: the answer only, never the reasoning.

    Qwen3's own template drops reasoning from earlier turns, but other templates (and fine-tuned
    ones) may not; sending only the answer keeps every template on Qwen3's rule."""
    return Message(role="assistant", content=split_reasoning(answer).answer)


def build_prompt(tokenizer, messages: list[Message] | list[dict], *, thinking: bool,
                 system: str = "") -> str:
    """The generation prompt for ``messages`` through the tokenizer's own chat template."""
    from core.data.render import render_text

    msgs: list[Message] = []
    if system.strip():
        msgs.append(Message(role="system", content=system.strip()))
    for m in messages:
        if isinstance(m, dict):
            m = Message(role=m["role"], content=m.get("content") or "")
        if m.role == "assistant":
            # Reasoning never goes back into the history: Qwen3's template drops it from past turns,
            # so a model trained on that template never saw it there.
            m = Message(role="assistant", content=split_reasoning(m.content).answer,
                        tool_calls=m.tool_calls)
        msgs.append(m)
    if not msgs or msgs[-1].role not in ("user", "tool"):
        raise ValueError("the conversation must end with a user message to answer")
    return render_text(Conversation(messages=msgs), tokenizer, add_generation_prompt=True,
                       enable_thinking=thinking)
