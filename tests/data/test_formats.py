"""Every supported row format becomes the right Conversation; rows that cannot be converted without
guessing are refused with a reason."""

from __future__ import annotations

import json

import pytest

from core.data.formats import RowError, detect_format, split_think, to_conversation
from core.settings import ConfigError


def conv(data, **kw):
    return to_conversation(data, "t.jsonl:1", **kw)[0]


def test_alpaca_user_turn_joins_instruction_and_input():
    c, fmt = to_conversation({"instruction": "翻译成英文", "input": "你好", "output": "Hello"}, "a:1")
    assert fmt == "alpaca"
    assert [(m.role, m.content) for m in c.messages] == [("user", "翻译成英文\n你好"), ("assistant", "Hello")]
    assert c.messages[1].reasoning is None


def test_alpaca_instruction_in_system_and_history():
    row = {"instruction": "Be brief.", "input": "Capital of France?", "output": "Paris.", "system": "You help.",
           "history": [["Hi", "Hello!"]]}
    c = conv(row, instruction_in="system")
    assert [(m.role, m.content) for m in c.messages] == [
        ("system", "You help.\n\nBe brief."), ("user", "Hi"), ("assistant", "Hello!"),
        ("user", "Capital of France?"), ("assistant", "Paris.")]


def test_alpaca_instruction_in_system_without_input_stays_user_turn():
    c = conv({"instruction": "写一首诗", "input": "", "output": "春风..."}, instruction_in="system")
    assert [m.role for m in c.messages] == ["user", "assistant"]


def test_alpaca_output_with_think_tags_becomes_reasoning():
    c = conv({"instruction": "2+2?", "input": "", "output": "<think>\ntwo and two\n</think>\n\n4"})
    assert c.messages[-1].reasoning == "two and two"
    assert c.messages[-1].content == "4"
    assert c.has_reasoning


def test_sharegpt_roles_and_system_column():
    row = {"system": "Be kind.", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}
    c, fmt = to_conversation(row, "s:1")
    assert fmt == "sharegpt"
    assert [m.role for m in c.messages] == ["system", "user", "assistant", "user", "assistant"]


def test_sharegpt_tools_as_json_string_function_call_and_observation():
    tools = json.dumps([{"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}])
    row = {"tools": tools, "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp": 20}'},
        {"from": "gpt", "value": "It is 20 degrees."}]}
    c = conv(row)
    assert c.tools == [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                         "parameters": {"type": "object"}}}]
    call = c.messages[1]
    assert call.role == "assistant" and call.tool_calls[0].name == "get_weather"
    assert call.tool_calls[0].arguments == {"city": "Paris"}
    assert c.messages[2].role == "tool" and c.messages[2].content == '{"temp": 20}'


def test_sharegpt_text_then_function_call_is_one_reply():
    row = {"conversations": [
        {"from": "human", "value": "Check"}, {"from": "gpt", "value": "Let me look."},
        {"from": "function_call", "value": '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'},
        {"from": "observation", "value": "ok"}, {"from": "gpt", "value": "Done."}]}
    c = conv(row)
    assert [m.role for m in c.messages] == ["user", "assistant", "tool", "assistant"]
    assert c.messages[1].content == "Let me look." and [t.name for t in c.messages[1].tool_calls] == ["a", "b"]


def test_sharegpt_custom_tags_via_columns():
    row = {"dialog": [{"speaker": "Q", "text": "Hi"}, {"speaker": "A", "text": "Hello"}]}
    cols = {"conversations": "dialog", "role_tag": "speaker", "content_tag": "text", "user_tag": "Q",
            "assistant_tag": "A"}
    c = conv(row, fmt="sharegpt", columns=cols)
    assert [(m.role, m.content) for m in c.messages] == [("user", "Hi"), ("assistant", "Hello")]


def test_messages_with_tool_calls_tool_turns_and_tools():
    row = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": {"temp": -3}},
        {"role": "assistant", "content": "It is -3.", "reasoning_content": "Tool said -3."}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}
    c, fmt = to_conversation(row, "m:1")
    assert fmt == "messages"
    assert c.messages[1].tool_calls[0].arguments == '{"city": "Oslo"}'  # kept exactly as stored
    assert c.messages[2].content == '{"temp": -3}' and c.messages[2].name == "get_weather"
    assert c.messages[3].reasoning == "Tool said -3."


def test_messages_content_parts_text_and_thinking():
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Because of X."},
                                          {"type": "text", "text": "Because."}]}]}
    c = conv(row)
    assert c.messages[0].content == "Why?"
    assert (c.messages[1].reasoning, c.messages[1].content) == ("Because of X.", "Because.")


def test_messages_image_part_is_refused():
    row = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                        {"role": "assistant", "content": "A cat."}]}
    with pytest.raises(RowError, match="unsupported content"):
        conv(row)


def test_messages_reasoning_given_twice_is_refused():
    row = {"messages": [{"role": "user", "content": "Q"},
                        {"role": "assistant", "content": "<think>a</think>b", "reasoning_content": "c"}]}
    with pytest.raises(RowError, match="reasoning given twice"):
        conv(row)


def test_reasoning_format_with_thinking_column():
    c, fmt = to_conversation({"question": "1+1?", "thinking": "one and one", "answer": "2"}, "r:1")
    assert fmt == "reasoning"
    assert (c.messages[-1].reasoning, c.messages[-1].content) == ("one and one", "2")


def test_openmath_with_think_tags_answer_is_after_trace():
    row = {"problem": "2+2?", "generated_solution": "<think>\nAdd them: 4.\n</think>\nThe sum is \\boxed{4}.",
           "expected_answer": "4", "inference_mode": "cot"}
    c, fmt = to_conversation(row, "o:1")
    assert fmt == "openmath"
    assert c.messages[1].reasoning == "Add them: 4."
    assert c.messages[1].content == "The sum is \\boxed{4}."
    assert c.meta == {"expected_answer": "4"}


def test_openmath_without_tags_whole_solution_is_trace_and_answer_is_last_boxed():
    sol = "First \\boxed{wrong} then fix. So the answer is \\boxed{\\frac{1}{6}}."
    c = conv({"problem": "P?", "generated_solution": sol, "expected_answer": "1/6"})
    assert c.messages[1].reasoning == sol
    assert c.messages[1].content == "The answer is $\\boxed{\\frac{1}{6}}$."


def test_openmath_without_tags_or_boxed_uses_expected_answer_else_skips():
    c = conv({"problem": "P?", "generated_solution": "long work", "expected_answer": "42"})
    assert c.messages[1].content == "The answer is $\\boxed{42}$."
    with pytest.raises(RowError, match="no final answer"):
        conv({"problem": "P?", "generated_solution": "long work", "expected_answer": ""})


def test_split_think_matches_qwen3_template_rules():
    assert split_think("<think>\nA\n</think>\n\nB") == ("A", "B")
    assert split_think("A</think>B") == ("A", "B")  # opening tag missing (R1-style output)
    assert split_think("no tags") == (None, "no tags")
    for bad, reason in [("<think>never closed", "unclosed"), ("<think>a</think>b<think>c</think>d", "several"),
                        ("Sure. <think>a</think>b", "text before")]:
        with pytest.raises(RowError, match=reason):
            split_think(bad)


@pytest.mark.parametrize("row,reason", [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "wizard", "value": "Hello"}]}, "unknown role"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Anyone?"}]},
     "no assistant turn"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hi"}]}, "empty field"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}, "empty field"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                   {"role": "user", "content": "More?"}]}, "ends without a reply"),
    ({"instruction": "Do it", "input": "", "output": ""}, "empty field"),
    ({"messages": []}, "empty field"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}], "tools": "{oops"},
     "invalid JSON field"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "not json"}]},
     "invalid JSON field"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}]}, "invalid tool call"),
    ({"text": "just text"}, "unknown format"),
])
def test_bad_rows_are_refused_with_a_reason(row, reason):
    with pytest.raises(RowError) as exc:
        conv(row)
    assert exc.value.reason == reason


def test_wrong_column_mapping_names_the_column():
    with pytest.raises(RowError, match="'question'.*columns.instruction"):
        conv({"instruction": "a", "output": "b"}, columns={"instruction": "question"})


def test_explicit_format_on_wrong_data_names_missing_field():
    with pytest.raises(RowError, match="format alpaca needs a column 'output'"):
        conv({"conversations": [{"from": "human", "value": "Hi"}]}, fmt="alpaca")


def test_unknown_column_key_is_a_config_error():
    from core.data.formats import check_columns

    with pytest.raises(ConfigError, match="columns.questoin"):
        check_columns({"questoin": "q"})


def test_system_prompt_added_only_where_missing():
    c = conv({"instruction": "Hi", "output": "Hello"}, system_prompt="Be nice.")
    assert c.messages[0].role == "system" and c.messages[0].content == "Be nice."
    c = conv({"instruction": "Hi", "output": "Hello", "system": "Own."}, system_prompt="Be nice.")
    assert [m.content for m in c.messages if m.role == "system"] == ["Own."]


def test_detect_format():
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"conversations": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect_format({"conversations": [{"role": "user", "content": "x"}]}) == "messages"
    assert detect_format({"problem": "", "generated_solution": ""}) == "openmath"
    assert detect_format({"instruction": "", "input": "", "output": ""}) == "alpaca"
    assert detect_format({"prompt": "", "response": ""}) == "reasoning"
    assert detect_format({"foo": 1}) is None
