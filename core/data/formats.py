"""Rows of any common dataset format -> :class:`Conversation`.

Formats (detected per row from its columns, or chosen with ``format:``; ``columns:`` renames the
dataset's columns to the names below first):

* ``alpaca``   instruction, input, output (+ system, history [[q, a], ...], reasoning)
* ``sharegpt`` conversations [{from, value}] with human / gpt / system / function_call / observation
               (+ system, tools; tools may be a JSON string); role_tag, content_tag, user_tag,
               assistant_tag, system_tag, function_tag, observation_tag rename the inner keys/values
* ``messages`` messages [{role, content}] (OpenAI), with tool_calls, tool turns and a tools list;
               content may be a list of typed parts as OpenAI and LLaMA-Factory write them (payload
               in ``text`` or ``value``; text, reasoning / thinking, tool_call, tool_response parts)
* ``reasoning`` prompt (or question/instruction/problem), reasoning (or thinking/reasoning_content/cot),
               answer (or response/output/solution)
* ``openmath`` problem, generated_solution, expected_answer (OpenMathReasoning)

Preference rows (a prompt, the chosen reply, the rejected reply; see docs/data.md):

* ``preference``          prompt, chosen, rejected (TRL): strings, or message lists (prompt a list of
                          turns, chosen / rejected a list with the assistant reply); without prompt,
                          chosen and rejected are whole conversations that differ in the last reply
* ``sharegpt_preference`` conversations ending with a human turn + chosen / rejected {from: gpt, value}
                          (LLaMA-Factory, ``ranking: true``)
* ``alpaca_preference``   instruction, input (+ system, history) + chosen / rejected strings (LLaMA-Factory)
* ``messages_preference`` messages whose last assistant turn is the chosen reply + rejected_response
                          (ms-swift; or rejected_messages, the whole rejected conversation)

Prompt sets (a prompt and its reference answer, for GRPO): ``prompt`` (prompt as text or a list of
turns + answer / solution / ground_truth / reward_model.ground_truth, as DAPO-Math writes it),
``gsm8k`` (question + answer ending "#### 42"), ``openmath`` (problem + expected_answer), and any
format above in a mix of kind ``prompt`` (the turns up to the last user turn; the answer from
expected_answer / answer / solution, or the reference reply's ``\boxed{}`` or ``####``).

Reasoning is taken from a ``reasoning_content`` / ``reasoning`` / ``thinking`` field or from text that
holds ``<think>...</think>`` (split exactly the way Qwen3's template splits it). A row that cannot be
converted without guessing is skipped with a reason (:class:`RowError`); nothing is silently changed:
problems of rows that are kept (a number where text belongs, unusual turn order) are returned as notes.
Text fields are kept exactly as written (no stripping), as LLaMA-Factory hands them to the template.
"""

from __future__ import annotations

import json
import math

from core.config import FORMATS
from core.data.conversation import Conversation, Message, ToolCall
from core.eval.answers import last_boxed
from core.settings import ConfigError

FORMAT_NAMES = tuple(f for f in FORMATS if f != "auto")
PREFERENCE_FORMATS = ("preference", "sharegpt_preference", "alpaca_preference", "messages_preference")
PROMPT_FORMATS = ("prompt", "gsm8k")

# Canonical column names each format reads; ``columns:`` maps these to the dataset's names.
COLUMN_KEYS = {
    "alpaca": ("instruction", "input", "output", "system", "history", "reasoning"),
    "sharegpt": ("conversations", "system", "tools", "role_tag", "content_tag", "user_tag",
                 "assistant_tag", "system_tag", "function_tag", "observation_tag"),
    "messages": ("messages", "tools"),
    "reasoning": ("prompt", "reasoning", "answer", "system"),
    "openmath": ("problem", "generated_solution", "expected_answer"),
    "preference": ("prompt", "chosen", "rejected", "system", "tools"),
    "sharegpt_preference": ("conversations", "chosen", "rejected", "system", "tools", "role_tag", "content_tag",
                            "user_tag", "assistant_tag", "system_tag", "function_tag", "observation_tag"),
    "alpaca_preference": ("instruction", "input", "chosen", "rejected", "system", "history"),
    "messages_preference": ("messages", "rejected_response", "rejected_messages", "tools"),
    "prompt": ("prompt", "answer", "solution", "ground_truth", "reward_model", "system"),
    "gsm8k": ("question", "answer", "system"),
}
INNER_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag", "function_tag",
              "observation_tag")
ALL_COLUMN_KEYS = tuple(dict.fromkeys(k for keys in COLUMN_KEYS.values() for k in keys))

PROMPT_KEYS = ("prompt", "question", "query", "instruction", "problem")
REASONING_KEYS = ("reasoning", "reasoning_content", "thinking", "thought", "cot", "think")
ANSWER_KEYS = ("answer", "response", "output", "solution", "completion")
MESSAGE_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
    "function_call": "function_call", "tool_call": "function_call",
    "observation": "tool", "tool": "tool", "function_response": "tool", "tool_response": "tool",
}
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user",
                 "assistant": "assistant", "gpt": "assistant", "model": "assistant",
                 "tool": "tool", "function": "tool", "ipython": "tool"}



class RowError(ValueError):
    """This row cannot be converted. ``reason`` is the short category shown in reports."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# ---------------------------------------------------------------------------------- detection
def check_columns(columns: dict, fmt: str = "auto") -> None:
    """Reject a column mapping with unknown canonical names (a ConfigError naming the key)."""
    known = ALL_COLUMN_KEYS if fmt == "auto" else COLUMN_KEYS.get(fmt, ALL_COLUMN_KEYS)
    for key, value in (columns or {}).items():
        if key not in known:
            raise ConfigError(f"unknown column name {key!r} for format {fmt}; known: {', '.join(known)}",
                              f"columns.{key}")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"must name a column of the data, got {value!r}", f"columns.{key}")


def apply_columns(data: dict, columns: dict) -> dict:
    """Rename the dataset's columns to the canonical names. A mapped column that is absent is an error."""
    if not columns:
        return data
    out = dict(data)
    for key, col in columns.items():
        if key in INNER_KEYS:
            continue
        if col not in data:
            raise RowError("missing column", f"column {col!r} (columns.{key}) is not in the row; "
                                             f"it has: {', '.join(map(str, data)) or '(nothing)'}")
        out[key] = data[col]
    return out


def detect_format(data: dict) -> str | None:
    """The format a row's columns suggest, or None."""
    keys = set(data)
    if "chosen" in keys or "rejected" in keys:
        if "conversations" in keys or "conversation" in keys:
            return "sharegpt_preference"
        if "instruction" in keys:
            return "alpaca_preference"
        return "preference"
    if "rejected_response" in keys or "rejected_messages" in keys:
        return "messages_preference"
    if isinstance(data.get("messages"), (list, str)):
        return "messages"
    for key in ("conversations", "conversation"):
        conv = data.get(key)
        if isinstance(conv, str):
            try:
                conv = json.loads(conv)
            except ValueError:
                continue
        if isinstance(conv, list):
            first = next((t for t in conv if isinstance(t, dict)), {})
            return "messages" if "role" in first and "from" not in first else "sharegpt"
    if {"problem", "generated_solution"} <= keys or {"problem", "expected_answer"} <= keys:
        return "openmath"
    if isinstance(data.get("reward_model"), dict) or "ground_truth" in keys:
        return "prompt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if isinstance(data.get("prompt"), list):
        return "prompt"  # a prompt written as turns (DAPO-Math): nothing to imitate, only to answer
    if isinstance(data.get("question"), str) and isinstance(data.get("answer"), str) and "####" in data["answer"]:
        return "gsm8k"
    if keys & set(PROMPT_KEYS) and keys & set(ANSWER_KEYS):
        return "reasoning"
    if keys & set(PROMPT_KEYS):
        return "prompt"
    return None


def _strong_prompt(data: dict) -> bool:
    """Whether a row says by itself that it is a prompt set's (turns as the prompt, a ground truth)."""
    return isinstance(data.get("prompt"), list) or isinstance(data.get("reward_model"), dict) or "ground_truth" in data


def natural_kind(data: dict, fmt: str) -> str:
    """The kind of mix a row of ``fmt`` is for when the mix does not say (``kind: auto``)."""
    if fmt in PREFERENCE_FORMATS:
        return "preference"
    if fmt in PROMPT_FORMATS or (fmt == "openmath" and "generated_solution" not in data):
        return "prompt"
    return "sft"


def kind_accepts(kind: str, fmt: str, data: dict | None = None) -> bool:
    """Whether a row of ``fmt`` can go into a mix of ``kind``: preference rows only into a preference
    mix; any other row gives a prompt set its question; a prompt set's row (no reply) is not SFT
    data, though a GSM8K row, whose answer is a worked solution, is."""
    row_kind = natural_kind(data or {}, fmt)
    if kind == "preference":
        return row_kind == "preference"
    if kind == "prompt":
        return row_kind != "preference"
    return row_kind == "sft" or fmt == "gsm8k"


KIND_ROWS = {"sft": "conversations", "preference": "preference pairs", "prompt": "prompts"}


# -------------------------------------------------------------------------------------- helpers
def _text(value, what: str, notes: list | None = None) -> str:
    """A text field; None becomes ''. A number becomes its text with a note (JSON numbers where text
    belongs are usually a column mix-up); NaN / Infinity are refused: training on the text "nan" is
    never what the data meant. Lists/dicts are an error."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError("NaN or Infinity", f"{what} is {value} (a JSON NaN/Infinity), not text")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if notes is not None:
            notes.append(("number as text", f"{what} is the number {value}; trained as the text {str(value)!r}"))
        return str(value)
    raise RowError("wrong field type", f"{what} should be text, got {type(value).__name__}")


def _optional_text(value, what: str, notes: list | None = None) -> str:
    """An optional text field. NaN there is how pandas-made files (CSV, Parquet) write a missing
    value, so it reads as empty, with a note."""
    if isinstance(value, float) and math.isnan(value):
        if notes is not None:
            notes.append(("NaN read as empty", f"{what} is NaN; read as an empty (missing) field"))
        return ""
    return _text(value, what, notes)


def _json_field(value, what: str):
    """Lists and objects stored as JSON text (CSV, ShareGPT tools) are parsed; '' means absent."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except RecursionError:
            raise RowError("nested too deep", f"{what} is JSON nested too deep to read") from None
        except ValueError as exc:
            raise RowError("invalid JSON field", f"{what} is text but not valid JSON ({exc})") from None
    return value


def split_think(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of text that may hold ``<think>...</think>``, split like Qwen3's template.
    Returns (None, text) when there is no ``</think>``."""
    if "</think>" not in text:
        if "<think>" in text:
            raise RowError("unclosed <think>", "the text opens <think> but never closes it")
        return None, text
    if text.count("</think>") > 1 or text.count("<think>") > 1:
        raise RowError("several think blocks", "one reply holds more than one <think>...</think>")
    before, after = text.split("</think>")
    if "<think>" in before:
        lead, before = before.split("<think>")
        if lead.strip():
            raise RowError("text before <think>", f"the reply starts with {lead.strip()[:40]!r} before <think>")
    elif "<think>" in after:
        raise RowError("misplaced <think>", "</think> comes before <think>")
    return before.rstrip("\n").lstrip("\n"), after.lstrip("\n")


def _reasoning_and_content(content: str, reasoning) -> tuple[str | None, str]:
    """Combine an explicit reasoning field with think tags in the content."""
    inline, answer = split_think(content)
    if reasoning is not None:
        reasoning = _text(reasoning, "reasoning")
        if inline:
            raise RowError("reasoning given twice", "both a reasoning field and <think> text in the content")
        return reasoning.strip("\n") or None, answer
    return (inline or None), answer


def normalise_tools(tools) -> list[dict] | None:
    """A tools list as OpenAI-style schemas: bare {name, parameters} become {type: function, function}."""
    tools = _json_field(tools, "tools")
    if tools is None or tools == []:
        return None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise RowError("invalid tools", f"tools should be a list of JSON schemas, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise RowError("invalid tools", f"tools[{i}] is not an object")
        if "function" in tool and isinstance(tool["function"], dict):
            if not tool["function"].get("name"):
                raise RowError("invalid tools", f"tools[{i}] has no function name")
            out.append(tool)
        elif tool.get("name"):
            out.append({"type": "function", "function": tool})
        else:
            raise RowError("invalid tools", f"tools[{i}] has no name")
    return out


def _tool_call(item, where: str) -> ToolCall:
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]
    if not isinstance(item, dict) or not item.get("name"):
        raise RowError("invalid tool call", f"{where}: expected an object with a name and arguments")
    args = item.get("arguments", item.get("parameters", {}))
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            json.loads(args)
        except ValueError:
            raise RowError("invalid tool call", f"{where}: arguments are not valid JSON") from None
    elif not isinstance(args, dict):
        raise RowError("invalid tool call", f"{where}: arguments should be an object")
    return ToolCall(str(item["name"]), args)


TEXT_PARTS = ("text", "output_text", "input_text")
REASONING_PARTS = ("thinking", "reasoning", "reasoning_content")
TOOL_CALL_PARTS = ("tool_call", "function_call")
TOOL_RESULT_PARTS = ("tool_response", "tool_result", "observation", "function_response")


def _part_value(part: dict, keys: tuple[str, ...], where: str, notes: list | None):
    """The payload of a typed part: OpenAI writes ``text``, LLaMA-Factory ``value``."""
    for key in keys:
        if part.get(key) is not None:
            return _text(part[key], where, notes)
    return ""


def _content_and_parts(content, where: str, notes: list | None = None
                       ) -> tuple[str, str | None, list[ToolCall]]:
    """Message content as (text, reasoning, tool calls). A list of typed parts (OpenAI: ``text``;
    LLaMA-Factory: ``value``) is read the way LLaMA-Factory hands it to ``apply_chat_template``:
    text and tool-result parts joined, reasoning parts joined, tool-call parts as tool calls."""
    if content is None:
        return "", None, []
    if not isinstance(content, list):
        return _text(content, where, notes), None, []
    texts, thoughts, calls = [], [], []
    for j, part in enumerate(content):
        at = f"{where} part {j}"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError("invalid content part", f"{at} is not an object")
        kind = part.get("type", "text")
        if kind in TEXT_PARTS or kind in TOOL_RESULT_PARTS:
            texts.append(_part_value(part, ("text", "value", "content", "output"), at, notes))
        elif kind in REASONING_PARTS:
            thoughts.append(_part_value(part, (kind, "thinking", "reasoning", "text", "value"), at, notes))
        elif kind in TOOL_CALL_PARTS:
            if part.get("name") is not None or isinstance(part.get("function"), dict):
                item = part
            else:
                item = _json_field(part.get("value", part.get("text")), f"{at} ({kind})")
            calls.append(_tool_call(item, f"{at} ({kind})"))
        else:
            raise RowError("unsupported content", f"{at} has type {kind!r} (text, reasoning, tool_call and "
                                                  "tool_response parts are supported)")
    return "".join(texts), ("".join(thoughts) if thoughts else None), calls


# -------------------------------------------------------------------------------------- formats
def from_alpaca(data: dict, instruction_in: str = "user", notes: list | None = None, *, reply: bool = True
                ) -> tuple[list[Message], list[dict] | None]:
    """Fields are kept exactly as written (no stripping), joined the way LLaMA-Factory joins them:
    ``instruction + "\n" + input``; trailing spaces are part of what the model is shown. With
    ``reply=False`` only the prompt is built (ending with the user turn; ``output`` is not read)."""
    instruction = _text(data.get("instruction"), "instruction", notes)
    query = _optional_text(data.get("input"), "input", notes)
    output = _text(data.get("output"), "output", notes) if reply else ""
    system = _optional_text(data.get("system"), "system", notes)
    if not instruction and not query:
        raise RowError("empty field", "instruction and input are both empty")
    if reply and not output.strip():
        raise RowError("empty field", "output is empty")
    msgs: list[Message] = []
    if instruction_in == "system" and query:
        # The instruction becomes (part of) the system turn; a row without input keeps it as the
        # user turn, since a conversation needs a user turn (documented in docs/data.md).
        system = f"{system}\n\n{instruction}" if system else instruction
        user = query
    else:
        user = f"{instruction}\n{query}" if instruction and query else (instruction or query)
    if system:
        msgs.append(Message("system", system))
    history = _json_field(data.get("history"), "history") or []
    if not isinstance(history, list):
        raise RowError("invalid history", "history should be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError("invalid history", f"history[{i}] is not a [question, answer] pair")
        q, a = _text(pair[0], f"history[{i}][0]", notes), _text(pair[1], f"history[{i}][1]", notes)
        if not q.strip() or not a.strip():
            raise RowError("empty field", f"history[{i}] has an empty question or answer")
        reasoning, answer = split_think(a)
        msgs += [Message("user", q), Message("assistant", answer, reasoning=reasoning or None)]
    msgs.append(Message("user", user))
    if reply:
        reasoning, answer = _reasoning_and_content(output, data.get("reasoning"))
        msgs.append(Message("assistant", answer, reasoning=reasoning))
    return msgs, None


def from_sharegpt(data: dict, columns: dict | None = None, notes: list | None = None
                  ) -> tuple[list[Message], list[dict] | None]:
    columns = columns or {}
    role_tag = columns.get("role_tag", "from")
    content_tag = columns.get("content_tag", "value")
    roles = dict(SHAREGPT_ROLES)
    for tag, role in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system"),
                      ("function_tag", "function_call"), ("observation_tag", "tool")):
        if columns.get(tag):
            roles[str(columns[tag]).strip().lower()] = role
    key = "conversations" if "conversations" in data else "conversation"
    turns = _json_field(data.get(key), key)
    if turns is None or turns == []:
        raise RowError("empty field", f"{key} is missing or empty")
    if not isinstance(turns, list):
        raise RowError("invalid field", f"{key} should be a list of turns, got {_kind(turns)}")
    msgs: list[Message] = []
    system = _optional_text(data.get("system"), "system", notes)
    for i, turn in enumerate(turns):
        where = f"turn {i}"
        if not isinstance(turn, dict):
            raise RowError("invalid turn", f"{where} is not an object")
        if role_tag not in turn and "role" in turn:
            raw_role, value = turn.get("role"), turn.get("content")
        else:
            raw_role, value = turn.get(role_tag), turn.get(content_tag)
        role = roles.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            raise RowError("unknown role", f"{where} has role {raw_role!r}; known: {', '.join(sorted(roles))}")
        if role == "function_call":
            calls = _json_field(value, f"{where} (function_call)")
            calls = calls if isinstance(calls, list) else [calls]
            tool_calls = [_tool_call(c, f"{where} (function_call)") for c in calls]
            prev = msgs[-1] if msgs else None
            if prev is not None and prev.role == "assistant" and not prev.tool_calls:
                prev.tool_calls = tool_calls  # text then a call: one assistant reply, as Qwen3 writes it
            else:
                msgs.append(Message("assistant", "", tool_calls=tool_calls))
            continue
        if role == "tool" and isinstance(value, (dict, list)):
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = _text(value, where, notes)
        if role == "system":
            if i == 0 and system and text.strip() != system.strip():
                raise RowError("system prompt given twice", "a system column and a different system turn")
            if i == 0 and system:
                continue
        if role == "assistant":
            reasoning, answer = _reasoning_and_content(text, turn.get("reasoning", turn.get("thinking")))
            msgs.append(Message("assistant", answer, reasoning=reasoning))
        else:
            msgs.append(Message(role, text))
    if system:
        msgs.insert(0, Message("system", system))
    return msgs, normalise_tools(data.get("tools"))


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def from_messages(data: dict, notes: list | None = None) -> tuple[list[Message], list[dict] | None]:
    # Some exports keep OpenAI-style {role, content} turns under ShareGPT's column name.
    key = next((k for k in ("messages", "conversations", "conversation") if k in data), "messages")
    turns = _json_field(data.get(key), key)
    if turns is None or turns == []:
        raise RowError("empty field", f"{key} is missing or empty")
    if not isinstance(turns, list):
        raise RowError("invalid field", f"{key} should be a list of turns, got {_kind(turns)}")
    msgs: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"message {i}"
        if not isinstance(turn, dict):
            raise RowError("invalid turn", f"{where} is not an object")
        raw_role = turn.get("role", turn.get("from"))
        role = MESSAGE_ROLES.get(str(raw_role).strip().lower()) if raw_role is not None else None
        if role is None:
            raise RowError("unknown role", f"{where} has role {raw_role!r}; known: {', '.join(sorted(MESSAGE_ROLES))}")
        raw_content = turn.get("content", turn.get("value"))
        if role == "tool" and isinstance(raw_content, (dict, list)) and not (
                isinstance(raw_content, list) and raw_content and isinstance(raw_content[0], dict)
                and "type" in raw_content[0]):
            content, part_reasoning, part_calls = json.dumps(raw_content, ensure_ascii=False), None, []
        else:
            content, part_reasoning, part_calls = _content_and_parts(raw_content, where, notes)
        if part_calls and role != "assistant":
            raise RowError("invalid tool call", f"{where} is a {role} turn holding a tool_call part")
        if role == "assistant":
            field_reasoning = next((turn[k] for k in MESSAGE_REASONING_KEYS if turn.get(k) is not None), None)
            if part_reasoning is not None and field_reasoning is not None:
                raise RowError("reasoning given twice", f"{where} has thinking parts and a reasoning field")
            reasoning, answer = _reasoning_and_content(content, field_reasoning if field_reasoning is not None
                                                       else part_reasoning)
            raw_calls = _json_field(turn.get("tool_calls"), f"{where} tool_calls") or []
            if isinstance(raw_calls, dict):
                raw_calls = [raw_calls]
            if not isinstance(raw_calls, list):
                raise RowError("invalid tool call", f"{where} tool_calls should be a list")
            calls = part_calls + [_tool_call(c, f"{where} tool_calls[{j}]") for j, c in enumerate(raw_calls)]
            # LLaMA-Factory marks context-only replies with loss_weight 0.
            weight = turn.get("loss_weight")
            loss = not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight == 0)
            msgs.append(Message("assistant", answer, reasoning=reasoning, tool_calls=calls, loss=loss))
        elif role == "tool":
            name = turn.get("name") or turn.get("tool_call_id")
            msgs.append(Message("tool", content, name=str(name) if name else None))
        else:
            msgs.append(Message(role, content))
    return msgs, normalise_tools(data.get("tools"))


def _first(data: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in data and data[k] is not None:
            return k, data[k]
    return None, None


def from_reasoning(data: dict, notes: list | None = None) -> tuple[list[Message], list[dict] | None]:
    pk, prompt = _first(data, PROMPT_KEYS)
    ak, answer = _first(data, ANSWER_KEYS)
    if pk is None:
        raise RowError("missing field", f"no prompt column (one of {', '.join(PROMPT_KEYS)})")
    if ak is None:
        raise RowError("missing field", f"no answer column (one of {', '.join(ANSWER_KEYS)})")
    prompt, answer = _text(prompt, pk, notes), _text(answer, ak, notes)
    if not prompt.strip():
        raise RowError("empty field", f"{pk} is empty")
    if not answer.strip():
        raise RowError("empty field", f"{ak} is empty")
    _rk, reasoning = _first(data, REASONING_KEYS)
    reasoning, content = _reasoning_and_content(answer, reasoning)
    msgs = []
    system = _optional_text(data.get("system"), "system", notes)
    if system.strip():
        msgs.append(Message("system", system))
    msgs += [Message("user", prompt), Message("assistant", content, reasoning=reasoning)]
    return msgs, None


def from_openmath(data: dict, notes: list | None = None) -> tuple[list[Message], list[dict] | None]:
    """OpenMathReasoning: ``generated_solution`` is the reasoning trace. With ``</think>`` the part
    after it is the answer; without, the whole solution is the trace and the answer is its last
    ``\\boxed{}`` (or ``expected_answer``) written as "The answer is $\\boxed{X}$."."""
    problem = _text(data.get("problem"), "problem", notes)
    solution = _text(data.get("generated_solution"), "generated_solution", notes)
    expected = _optional_text(data.get("expected_answer"), "expected_answer", notes).strip()
    if not problem.strip():
        raise RowError("empty field", "problem is empty")
    if not solution.strip():
        raise RowError("empty field", "generated_solution is empty")
    reasoning, answer = split_think(solution)
    if reasoning is None:
        boxed = last_boxed(solution)
        final = boxed if boxed is not None else expected
        if not final:
            raise RowError("no final answer", "generated_solution has no </think> and no \\boxed{}, "
                                              "and expected_answer is empty")
        reasoning, answer = solution.strip("\n"), f"The answer is $\\boxed{{{final}}}$."
    elif not answer.strip():
        final = last_boxed(reasoning) or expected
        if not final:
            raise RowError("no final answer", "nothing after </think>, no \\boxed{} and no expected_answer")
        answer = f"The answer is $\\boxed{{{final}}}$."
    return [Message("user", problem), Message("assistant", answer, reasoning=reasoning or None)], None


CONVERTERS = {"alpaca": from_alpaca, "sharegpt": from_sharegpt, "messages": from_messages,
              "reasoning": from_reasoning, "openmath": from_openmath}


# --------------------------------------------------------------------------- preference rows
def _reply(value, what: str, notes: list | None) -> Message:
    """A chosen or rejected reply: text (``<think>`` split as for SFT), one {role, content} or
    {from, value} turn, or a list holding that one assistant turn (TRL's conversational style)."""
    if value is None:
        raise RowError("no rejected reply" if what == "rejected" else "no chosen reply", f"{what} is missing")
    if not isinstance(value, (dict, list)):
        reasoning, answer = _reasoning_and_content(_text(value, what, notes), None)
        msg = Message("assistant", answer, reasoning=reasoning)
    else:
        turns = value if isinstance(value, list) else [value]
        if not all(isinstance(t, dict) for t in turns):
            raise RowError("invalid reply", f"{what} should be text, a turn or a list with one assistant turn")
        msgs, _ = from_messages({"messages": turns}, notes)
        if len(msgs) != 1 or msgs[0].role != "assistant":
            raise RowError("invalid reply", f"{what} should hold one assistant turn, got "
                                            f"{', '.join(m.role for m in msgs)}")
        msg = msgs[0]
    if not (msg.content.strip() or msg.tool_calls or msg.reasoning):
        raise RowError("empty reply", f"{what} is empty")
    return msg


def _prompt_turns(value, notes: list | None) -> tuple[list[Message], list[dict] | None]:
    """A prompt given as text (one user turn) or as a list of turns."""
    if isinstance(value, list):
        return from_messages({"messages": value}, notes)
    text = _text(value, "prompt", notes)
    if not text.strip():
        raise RowError("empty field", "prompt is empty")
    return [Message("user", text)], None


def _with_system(msgs: list[Message], data: dict, notes: list | None) -> list[Message]:
    system = _optional_text(data.get("system"), "system", notes)
    if system.strip() and not (msgs and msgs[0].role == "system"):
        return [Message("system", system), *msgs]
    return msgs


def from_preference(data: dict, notes: list | None = None
                    ) -> tuple[list[Message], Message, Message, list[dict] | None]:
    """TRL's preference rows: explicit prompt (text or turns) + chosen / rejected replies, or the
    implicit-prompt style, where chosen and rejected are whole conversations sharing the prompt."""
    tools = normalise_tools(data.get("tools"))
    lists = [isinstance(data.get(k), list) for k in ("chosen", "rejected")]
    whole = all(lists) and len(data["chosen"]) > 1 and len(data["rejected"]) > 1
    if all(lists) and (data.get("prompt") is None or whole):
        # Whole conversations (UltraFeedback also keeps the question in a prompt column: the
        # conversations carry it, with any earlier turns).
        chosen_msgs, _ = from_messages({"messages": data["chosen"]}, notes)
        rejected_msgs, _ = from_messages({"messages": data["rejected"]}, notes)
        if len(chosen_msgs) < 2 or len(rejected_msgs) != len(chosen_msgs) or chosen_msgs[:-1] != rejected_msgs[:-1]:
            raise RowError("invalid reply", "without a prompt column, chosen and rejected must be conversations "
                                            "that differ only in their last (assistant) turn")
        for what, m in (("chosen", chosen_msgs[-1]), ("rejected", rejected_msgs[-1])):
            if m.role != "assistant":
                raise RowError("invalid reply", f"the last turn of {what} is {m.role}, not an assistant reply")
            if not (m.content.strip() or m.tool_calls or m.reasoning):
                raise RowError("empty reply", f"{what} is empty")
        prompt = data.get("prompt")
        if isinstance(prompt, str) and prompt.strip() and not any(
                m.role == "user" and m.content.strip() == prompt.strip() for m in chosen_msgs[:-1]):
            raise RowError("invalid reply", "chosen and rejected are conversations whose user turns do not hold "
                                            "the prompt column's text")
        return _with_system(chosen_msgs[:-1], data, notes), chosen_msgs[-1], rejected_msgs[-1], tools
    if data.get("prompt") is None:
        raise RowError("missing field", "no prompt column (and chosen / rejected are not whole conversations)")
    msgs, prompt_tools = _prompt_turns(data["prompt"], notes)
    chosen = _reply(data.get("chosen"), "chosen", notes)
    rejected = _reply(data.get("rejected"), "rejected", notes)
    return _with_system(msgs, data, notes), chosen, rejected, tools or prompt_tools


def from_sharegpt_preference(data: dict, columns: dict | None = None, notes: list | None = None):
    """LLaMA-Factory's ShareGPT ranking rows: the conversation ends with the human turn to answer."""
    msgs, tools = from_sharegpt(data, columns, notes)
    return msgs, _reply(data.get("chosen"), "chosen", notes), _reply(data.get("rejected"), "rejected", notes), tools


def from_alpaca_preference(data: dict, instruction_in: str = "user", notes: list | None = None):
    msgs, _ = from_alpaca(data, instruction_in, notes, reply=False)
    return msgs, _reply(data.get("chosen"), "chosen", notes), _reply(data.get("rejected"), "rejected", notes), None


def from_messages_preference(data: dict, notes: list | None = None):
    """ms-swift's rows: ``messages`` ends with the chosen reply; ``rejected_response`` is the other
    reply (text), or ``rejected_messages`` the whole rejected conversation."""
    msgs, tools = from_messages(data, notes)
    if not msgs or msgs[-1].role != "assistant":
        raise RowError("no chosen reply", "the last message should be the chosen assistant reply, got "
                                          f"{msgs[-1].role if msgs else 'nothing'}")
    chosen = msgs[-1]
    if not (chosen.content.strip() or chosen.tool_calls or chosen.reasoning):
        raise RowError("empty reply", "the chosen reply (the last message) is empty")
    if data.get("rejected_response") is not None:
        rejected = _reply(data["rejected_response"], "rejected", notes)
    elif data.get("rejected_messages") is not None:
        other, _ = from_messages({"messages": data["rejected_messages"]}, notes)
        if not other or other[-1].role != "assistant" or other[:-1] != msgs[:-1]:
            raise RowError("invalid reply", "rejected_messages must be the same conversation with another last "
                                            "assistant reply")
        rejected = other[-1]
        if not (rejected.content.strip() or rejected.tool_calls or rejected.reasoning):
            raise RowError("empty reply", "the rejected reply (the last of rejected_messages) is empty")
    else:
        raise RowError("no rejected reply", "rejected_response (or rejected_messages) is missing")
    return msgs[:-1], chosen, rejected, tools


def _same_reply(a: Message, b: Message) -> bool:
    return (a.content.strip(), (a.reasoning or "").strip(), a.tool_calls) == \
        (b.content.strip(), (b.reasoning or "").strip(), b.tool_calls)


def validate_prompt(msgs: list[Message]) -> None:
    """A prompt: turns that are not empty, a user turn, and a last turn the model answers (user or tool)."""
    for i, m in enumerate(msgs):
        if m.role in ("user", "system") and not m.content.strip():
            raise RowError("empty field", f"turn {i} ({m.role}) is empty")
        if m.role == "tool" and (i == 0 or msgs[i - 1].role not in ("assistant", "tool")):
            raise RowError("misplaced tool result", f"turn {i} is a tool result that follows no tool call")
    if not any(m.role == "user" for m in msgs):
        raise RowError("no user turn", "the prompt has no user turn")
    if msgs[-1].role not in ("user", "tool"):
        raise RowError("prompt does not end with a user turn",
                       f"the prompt's last turn is {msgs[-1].role}; the reply must answer a user (or tool) turn")


# -------------------------------------------------------------------------------- prompt rows
def _final_answer(text: str, *, whole: bool) -> str | None:
    """The final answer a reference text states: after GSM8K's ``####``, else its last ``\\boxed{}``,
    else (``whole``) the text itself when it is one short line."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail or None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    text = text.strip()
    if whole and text and "\n" not in text and len(text) <= 200:
        return text
    return None


def _answer_value(value, what: str, notes: list | None, *, whole: bool = True) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return _answer_value(value[0], what, notes, whole=whole)
    text = _optional_text(value, what, notes)
    return _final_answer(text, whole=whole)


def reference_answer(data: dict, msgs: list[Message], notes: list | None = None) -> str | None:
    """A prompt row's reference answer: expected_answer, reward_model.ground_truth (DAPO-Math),
    ground_truth, answer, solution, else the row's reference reply: the text after a ``####``, else
    its last ``\\boxed{}``, else the text itself when it is one short line."""
    reward_model = data.get("reward_model")
    candidates = [("expected_answer", data.get("expected_answer"), True),
                  ("reward_model.ground_truth", reward_model.get("ground_truth") if isinstance(reward_model, dict)
                   else None, True),
                  ("ground_truth", data.get("ground_truth"), True),
                  ("answer", data.get("answer"), True), ("solution", data.get("solution"), True)]
    for what, value, whole in candidates:
        found = _answer_value(value, what, notes, whole=whole)
        if found:
            return found
    replies = [m for m in msgs if m.role == "assistant"]
    if replies:
        return _final_answer(replies[-1].content, whole=True)
    return None


def _prompt_messages(data: dict, fmt: str, columns, instruction_in: str, notes: list
                     ) -> tuple[list[Message], list[dict] | None, list[Message]]:
    """(prompt turns, tools, every converted turn) of a row read as a prompt set's row."""
    if fmt == "prompt":
        _k, value = _first(data, PROMPT_KEYS)
        if value is None:
            raise RowError("missing field", f"no prompt column (one of {', '.join(PROMPT_KEYS)})")
        msgs, tools = _prompt_turns(value, notes)
        msgs = _with_system(msgs, data, notes)
        return msgs, tools, msgs
    if fmt in ("reasoning", "gsm8k", "openmath"):
        pk, value = _first(data, ("problem", *PROMPT_KEYS) if fmt == "openmath" else PROMPT_KEYS)
        if pk is None:
            raise RowError("missing field", f"no prompt column (one of {', '.join(PROMPT_KEYS)})")
        text = _text(value, pk, notes)
        if not text.strip():
            raise RowError("empty field", f"{pk} is empty")
        msgs = _with_system([Message("user", text)], data, notes)
        return msgs, None, msgs
    if fmt == "alpaca":
        msgs, tools = from_alpaca(data, instruction_in, notes, reply=False)
        has_reply = isinstance(data.get("output"), str) and data["output"].strip()
        return msgs, tools, (from_alpaca(data, instruction_in)[0] if has_reply else msgs)
    if fmt == "sharegpt":
        full, tools = from_sharegpt(data, columns, notes)
    else:
        full, tools = from_messages(data, notes)
    end = len(full)
    while end and full[end - 1].role == "assistant":
        end -= 1
    return full[:end], tools, full


class KindError(RowError):
    """A row of one kind in a mix of another (a preference pair in an SFT mix)."""

    def __init__(self, fmt: str, row_kind: str, kind: str):
        self.fmt, self.row_kind, self.kind = fmt, row_kind, kind
        super().__init__(f"{row_kind} row in {'an' if kind == 'sft' else 'a'} {kind} mix",
                         f"the row reads as {fmt} ({KIND_ROWS[row_kind]}), the mix holds {KIND_ROWS[kind]}")


# -------------------------------------------------------------------------------------- checks
def validate_messages(msgs: list[Message], notes: list | None = None) -> None:
    """The rules every converted conversation must meet (else the row is skipped). Orders that
    render and train but are rarely meant (a reply with no question before it, two questions in a
    row) are kept with a note."""
    if not any(m.role == "assistant" for m in msgs):
        raise RowError("no assistant turn", "the conversation has no assistant reply to train on")
    for i, m in enumerate(msgs):
        if m.role in ("user", "system") and not m.content.strip():
            raise RowError("empty field", f"turn {i} ({m.role}) is empty")
        if m.role == "assistant" and not (m.content.strip() or m.tool_calls or m.reasoning):
            raise RowError("empty field", f"turn {i} (assistant) is empty")
        if m.role == "tool" and (i == 0 or msgs[i - 1].role not in ("assistant", "tool")):
            raise RowError("misplaced tool result", f"turn {i} is a tool result that follows no tool call")
    if msgs[-1].role != "assistant":
        raise RowError("ends without a reply", f"the last turn is {msgs[-1].role}, not an assistant reply")
    if not any(m.role == "user" for m in msgs):
        raise RowError("no user turn", "the conversation has no user turn")
    if notes is None:
        return
    first = next(i for i, m in enumerate(msgs) if m.role != "system")
    if msgs[first].role == "assistant":
        notes.append(("starts with an assistant turn",
                      f"turn {first} is a reply with no user turn before it; it is trained as an "
                      "unprompted reply"))
    for i in range(1, len(msgs)):
        if msgs[i].role == msgs[i - 1].role and msgs[i].role in ("user", "assistant"):
            notes.append((f"two {msgs[i].role} turns in a row", f"turns {i - 1} and {i} are both {msgs[i].role}"))
            break


REQUIRED = {"alpaca": (("output",), ("instruction", "input")), "sharegpt": (("conversations", "conversation"),),
            "messages": (("messages", "conversations", "conversation"),), "reasoning": (PROMPT_KEYS, ANSWER_KEYS),
            "openmath": (("problem",), ("generated_solution",)),
            "preference": (("chosen", "rejected"),), "sharegpt_preference": (("conversations", "conversation"),),
            "alpaca_preference": (("instruction", "input"),), "messages_preference": (("messages",),),
            "prompt": (PROMPT_KEYS,), "gsm8k": (PROMPT_KEYS,)}
MAX_DEPTH = 64  # JSON nesting a tool schema or argument may have; deeper is corrupt data


def check_required(data: dict, fmt: str) -> None:
    for options in REQUIRED[fmt]:
        if not any(k in data for k in options):
            names = " or ".join(repr(k) for k in options)
            raise RowError("missing field", f"format {fmt} needs a column {names}; the row has: "
                                            f"{', '.join(map(str, data)) or '(nothing)'}")


def _undetected(data: dict) -> RowError:
    """Why a row's format cannot be told, naming the field that looks wrong when there is one."""
    for key in ("messages", "conversations", "conversation"):
        if key in data:
            value = data[key]
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except (ValueError, RecursionError):
                    return RowError("invalid JSON field", f"{key} is text but not valid JSON")
            return RowError("invalid field", f"{key} should be a list of turns, got {_kind(value)}")
    return RowError("unknown format", f"cannot tell the format from columns {sorted(map(str, data))}; "
                                      "set format: and columns: for this source")


def _check_value(value, where: str) -> None:
    """Refuse what must never reach the tokenizer or the template: lone surrogates (not encodable
    text), NUL characters, NaN/Infinity and absurd nesting (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise RowError("NUL character", f"{where} holds a NUL character (\\x00)")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RowError("broken UTF-8", f"{where} holds a lone surrogate "
                                               f"(\\u{ord(item[exc.start]):04x}), not text") from None
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise RowError("NaN or Infinity", f"{where} holds {item}")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise RowError("nested too deep", f"{where} is nested more than {MAX_DEPTH} levels deep")
            values = item.items() if isinstance(item, dict) else enumerate(item)
            for k, v in values:
                if isinstance(k, str):
                    stack.append((k, depth + 1))
                stack.append((v, depth + 1))


def check_conversation(conv: Conversation) -> None:
    """Every text of a converted conversation is safe to render and tokenize (else RowError)."""
    for i, m in enumerate(conv.messages):
        where = f"turn {i} ({m.role})"
        _check_value(m.content, where)
        if m.reasoning is not None:
            _check_value(m.reasoning, f"{where} reasoning")
        for tc in m.tool_calls:
            _check_value(tc.name, f"{where} tool call")
            _check_value(tc.arguments, f"{where} tool call arguments")
        if m.name:
            _check_value(m.name, where)
    if conv.rejected is not None:
        _check_value(conv.rejected.content, "rejected")
        if conv.rejected.reasoning is not None:
            _check_value(conv.rejected.reasoning, "rejected reasoning")
        for tc in conv.rejected.tool_calls:
            _check_value(tc.arguments, "rejected tool call arguments")
    if conv.tools:
        _check_value(conv.tools, "tools")


def to_conversation(data: dict, origin: str, *, fmt: str = "auto", columns: dict | None = None,
                    instruction_in: str = "user", system_prompt: str = "", source: str = "",
                    notes: list | None = None, kind: str = "auto") -> tuple[Conversation, str]:
    """Convert one row. Returns (conversation, format used); raises RowError to skip the row.
    The format is detected per row, so a bad row never decides how its neighbours are read.
    ``kind`` is the mix's (sft, preference, prompt; auto: the row's own, see :func:`natural_kind`):
    a preference row comes back with ``rejected`` set, a prompt row ending with its user turn and its
    reference answer in ``meta["expected_answer"]``; a row of another kind raises :class:`KindError`.
    ``notes`` collects (kind, detail) of problems that keep the row (numbers given as text,
    unusual turn order)."""
    try:
        return _to_conversation(data, origin, fmt, columns, instruction_in, system_prompt, source, notes, kind)
    except RowError:
        raise
    except RecursionError:
        raise RowError("nested too deep", "the row is nested too deep to read") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # Rows are arbitrary user data: whatever a converter trips on skips this row, with the cause.
        raise RowError("unreadable row", f"{type(exc).__name__}: {exc}") from None


def _expected_meta(data: dict) -> dict:
    meta = {}
    expected = data.get("expected_answer")
    if isinstance(expected, float) and not math.isfinite(expected):
        expected = None
    if expected is not None and expected != "":
        meta["expected_answer"] = expected if isinstance(expected, (str, int, float)) else json.dumps(expected)
    return meta


def _to_conversation(data, origin, fmt, columns, instruction_in, system_prompt, source, notes, kind="auto"):
    data = apply_columns(data, columns or {})
    if fmt == "auto":
        fmt_used = detect_format(data)
        if fmt_used is None:
            raise _undetected(data)
    else:
        fmt_used = fmt
    row_kind = natural_kind(data, fmt_used)
    if fmt == "auto" and fmt_used == "prompt" and kind != "prompt" and not _strong_prompt(data):
        # A lone question column is more often an SFT row that lost its reply than a prompt set.
        raise _undetected(data)
    if kind == "auto":
        kind = row_kind
    elif not kind_accepts(kind, fmt_used, data):
        raise KindError(fmt_used, row_kind, kind)
    local: list = []
    rejected = None
    if kind == "prompt":
        msgs, tools, full = _prompt_messages(data, fmt_used, columns, instruction_in, local)
    else:
        check_required(data, fmt_used)
        if kind == "preference":
            if fmt_used == "alpaca_preference":
                msgs, chosen, rejected, tools = from_alpaca_preference(data, instruction_in, local)
            elif fmt_used == "sharegpt_preference":
                msgs, chosen, rejected, tools = from_sharegpt_preference(data, columns, local)
            elif fmt_used == "messages_preference":
                msgs, chosen, rejected, tools = from_messages_preference(data, local)
            else:
                msgs, chosen, rejected, tools = from_preference(data, local)
        elif fmt_used == "alpaca":
            msgs, tools = from_alpaca(data, instruction_in, local)
        elif fmt_used == "sharegpt":
            msgs, tools = from_sharegpt(data, columns, local)
        else:
            msgs, tools = CONVERTERS["reasoning" if fmt_used == "gsm8k" else fmt_used](data, local)
    if system_prompt and (not msgs or msgs[0].role != "system"):
        msgs.insert(0, Message("system", system_prompt))
    meta = _expected_meta(data)
    if kind == "sft":
        validate_messages(msgs, local)
        if fmt_used == "gsm8k" and "expected_answer" not in meta:
            answer = reference_answer(data, msgs)
            if answer:
                meta["expected_answer"] = answer
    elif kind == "preference":
        if not msgs:
            raise RowError("no user turn", "the prompt is empty")
        validate_prompt(msgs)
        if _same_reply(chosen, rejected):
            raise RowError("chosen equals rejected", "the two replies are the same text; the pair teaches nothing")
        msgs.append(chosen)
    else:
        if not msgs:
            raise RowError("no user turn", "the row has no prompt")
        validate_prompt(msgs)
        answer = reference_answer(data, full, local)
        if not answer:
            raise RowError("no reference answer", "no expected_answer, answer, solution or ground_truth to check "
                                                  "a reply against (an answer column needs a \\boxed{} or #### "
                                                  "or one short line)")
        meta["expected_answer"] = answer
    conv = Conversation(messages=msgs, tools=tools, source=source, origin=origin, meta=meta, rejected=rejected)
    check_conversation(conv)
    if notes is not None:
        notes.extend(local)
    return conv, fmt_used


def parse_columns(text: str) -> dict:
    """A column mapping typed by a person: YAML/JSON (``{instruction: question}``) or lines of
    ``instruction: question`` / ``instruction=question``. Unknown names are a ConfigError."""
    import yaml

    text = (text or "").strip()
    if not text:
        return {}
    if "=" in text and ":" not in text:
        text = "\n".join(line.replace("=", ":", 1) for line in text.splitlines())
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not a mapping like 'instruction: question' ({exc})", "columns") from None
    if not isinstance(data, dict):
        raise ConfigError("write one 'name: column' pair per line, e.g. 'instruction: question'", "columns")
    out = {str(k): str(v) for k, v in data.items() if v is not None}
    check_columns(out)
    return out
