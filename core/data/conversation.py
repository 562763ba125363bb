"""The one record type that travels from a source file to the trainer and the chat panel.

Formats only produce :class:`Conversation`; rendering only consumes it. ``origin`` keeps the file
and line (or row index) the record came from, so any later error can point back to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ToolCall:
    name: str
    arguments: dict | str  # a dict, or the JSON text exactly as the source stored it

    def to_openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Message:
    role: str
    content: str = ""
    reasoning: str | None = None  # assistant's thinking, without <think> tags
    tool_calls: list[ToolCall] = field(default_factory=list)
    name: str | None = None  # tool name on tool turns
    loss: bool = True  # assistant turns only: False = shown as context, never trained

    def to_template(self) -> dict:
        """The dict ``apply_chat_template`` expects (Qwen3 reads ``reasoning_content``)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            out["reasoning_content"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = [tc.to_openai() for tc in self.tool_calls]
        if self.name:
            out["name"] = self.name
        return out


@dataclass
class Conversation:
    messages: list[Message]
    tools: list[dict] | None = None  # JSON schemas, OpenAI style
    source: str = ""  # the source's short name in a mix
    origin: str = ""  # "file.jsonl:17" or "dataset-id[42]"
    meta: dict = field(default_factory=dict)  # e.g. expected_answer
    # Preference rows: the last message is the chosen reply, this the rejected one to the same prompt.
    rejected: Message | None = None

    def template_messages(self) -> list[dict]:
        return [m.to_template() for m in self.messages]

    @property
    def has_reasoning(self) -> bool:
        return any(m.role == "assistant" and m.reasoning for m in self.messages)

    @property
    def kind(self) -> str:
        """'preference' (a chosen reply and a rejected one), 'prompt' (ends with a user or tool turn,
        for generation) or 'sft'."""
        if self.rejected is not None:
            return "preference"
        if self.messages and self.messages[-1].role in ("user", "tool"):
            return "prompt"
        return "sft"

    def with_reply(self, reply: Message) -> Conversation:
        """The same row with ``reply`` in place of the last message (the chosen one), as a plain
        conversation: how the rejected alternative of a preference row renders."""
        return Conversation(messages=[*self.messages[:-1], reply], tools=self.tools, source=self.source,
                            origin=self.origin, meta=self.meta)

    def to_json(self) -> dict:
        out = {
            "messages": [_message_json(m) for m in self.messages],
            "tools": self.tools,
            "source": self.source,
            "origin": self.origin,
            "meta": self.meta,
        }
        if self.rejected is not None:
            out["rejected"] = _message_json(self.rejected)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Conversation:
        rejected = data.get("rejected")
        return cls(messages=[_message_from_json(m) for m in data["messages"]], tools=data.get("tools"),
                   source=data.get("source", ""), origin=data.get("origin", ""), meta=data.get("meta") or {},
                   rejected=_message_from_json(rejected) if rejected is not None else None)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)


def _message_json(m: Message) -> dict:
    return {k: v for k, v in {
        "role": m.role, "content": m.content, "reasoning": m.reasoning,
        "tool_calls": [{"name": t.name, "arguments": t.arguments} for t in m.tool_calls] or None,
        "name": m.name,
        "loss": False if not m.loss else None,
    }.items() if v is not None}


def _message_from_json(m: dict) -> Message:
    return Message(role=m["role"], content=m.get("content", ""), reasoning=m.get("reasoning"),
                   tool_calls=[ToolCall(t["name"], t["arguments"]) for t in m.get("tool_calls") or []],
                   name=m.get("name"), loss=m.get("loss", True) is not False)
