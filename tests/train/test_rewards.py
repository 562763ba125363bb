"""GRPO rewards on real Qwen3-shaped replies: boxed and last-number answers, Chinese text, think blocks,
and the user's reward file with every way it can go wrong."""

from __future__ import annotations

import math
import textwrap

import pytest

from core.config import RLConfig
from core.settings import ConfigError
from core.train.rewards import (
    answer_reward,
    build_rewards,
    format_reward,
    format_score,
    load_reward_file,
    make_length,
)

THINKING = "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n"
NO_THINK = THINKING + "<think>\n\n</think>\n\n"
OPENED = THINKING + "<think>\n"  # a template that opens the think block itself


def rewards_of(fn, prompts, completions, answers, **kw):
    return fn(prompts=prompts, completions=completions, answer=answers, **kw)


# ------------------------------------------------------------------------------------------ answer
@pytest.mark.parametrize("completion, expected, score", [
    ("<think>\n6 times 7 is 42.\n</think>\n\nThe answer is \\boxed{42}.", "42", 1.0),
    ("<think>\nsix sevens\n</think>\n\nSo we get 40 + 2 = 42", "42", 1.0),  # last number
    ("<think>\n6*7\n</think>\n\n\\boxed{41}", "42", 0.0),
    ("<think>\nthe box \\boxed{42} is only a thought\n</think>\n\nI think it is 41.", "42", 0.0),
    ("<think>\n还在想 \\boxed{42}", "42", 0.0),  # never left the think block: no answer yet
    ("<think>\n六乘以七等于四十二。\n</think>\n\n所以答案是：42。", "42", 1.0),  # Chinese answer line
    ("<think>\n算一下\n</think>\n\n最终答案 \\boxed{\\frac{3}{4}}", "0.75", 1.0),  # same normaliser as eval
    ("<think>\n.\n</think>\n\nThere are \\boxed{1,000} apples.", "1000", 1.0),
    ("<think>\n.\n</think>\n\n$x = 5$", "5", 1.0),
    ("<think>\n.\n</think>\n\n\\boxed{42}<|im_end|>", "42", 1.0),  # end token left in the text
])
def test_answer_reward(completion, expected, score):
    assert rewards_of(answer_reward, [THINKING], [completion], [expected]) == [score]


def test_answer_reward_none_without_a_reference_and_when_no_column():
    comps = ["<think>\nx\n</think>\n\n\\boxed{1}"] * 2
    assert rewards_of(answer_reward, [THINKING] * 2, comps, [None, "  "]) == [None, None]
    assert answer_reward(prompts=[THINKING] * 2, completions=comps) == [None, None]


def test_answer_reward_prompt_that_opens_the_think_block():
    # The reply starts inside the reasoning: a box before </think> is still reasoning.
    comp = "I compute \\boxed{41} first.\n</think>\n\nIt is \\boxed{42}."
    assert rewards_of(answer_reward, [OPENED], [comp], ["42"]) == [1.0]
    assert rewards_of(answer_reward, [OPENED], ["still thinking \\boxed{42}"], ["42"]) == [0.0]


def test_answer_reward_thinking_off_and_conversational_completions():
    assert rewards_of(answer_reward, [NO_THINK], ["It is \\boxed{42}."], ["42"]) == [1.0]
    conv = [[{"role": "assistant", "content": "<think>\nok\n</think>\n\n42"}]]
    assert rewards_of(answer_reward, [[{"role": "user", "content": "6*7?"}]], conv, ["42"]) == [1.0]


# ------------------------------------------------------------------------------------------ format
@pytest.mark.parametrize("prompt, completion, score", [
    (THINKING, "<think>\nsix sevens are 42\n</think>\n\nThe answer is 42.", 1.0),
    (THINKING, "<think>\n\n</think>\n\nThe answer is 42.", 0.75),  # empty reasoning
    (THINKING, "<think>\nsix sevens are 42\n</think>\n\n", 0.5),  # nothing after the block
    (THINKING, "<think>\na\n</think>\n\n42 <think>again</think>", 0.5),  # a second block
    (THINKING, "<think>\nsix sevens are", 0.25),  # cut off while reasoning
    (THINKING, "The answer is 42.", 0.0),  # no think block
    (THINKING, "Sure! <think>\nx\n</think>\n\n42", 0.0),  # text before the block
    (THINKING, "<think>\n我来想一想：六乘七。\n</think>\n\n答案是四十二。", 1.0),
    (OPENED, "six sevens\n</think>\n\n42", 1.0),
    (OPENED, "six sevens and more", 0.25),
    (NO_THINK, "42", 1.0),
    (NO_THINK, "<think>\nhm\n</think>\n\n42", 0.5),
    (NO_THINK, "   ", 0.0),
])
def test_format_score(prompt, completion, score):
    assert format_score(prompt, completion) == score


def test_format_reward_is_a_list_per_completion():
    comps = ["<think>\nx\n</think>\n\n1", "no block", "<think>\nx"]
    assert format_reward(prompts=[THINKING] * 3, completions=comps) == [1.0, 0.0, 0.25]


# ------------------------------------------------------------------------------------------ length
def test_length_prefers_short_correct_answers_and_never_rewards_empty_or_wrong():
    length = make_length(100)
    short = "<think>\n42\n</think>\n\n\\boxed{42}"
    long = "<think>\n" + "let me think more. " * 10 + "\n</think>\n\n\\boxed{42}"
    wrong = "<think>\nx\n</think>\n\n\\boxed{41}"
    ids = [[1] * 10, [1] * 60, [1] * 5, []]
    got = rewards_of(length, [THINKING] * 4, [short, long, wrong, ""], ["42"] * 4, completion_ids=ids)
    assert got == [pytest.approx(0.9), pytest.approx(0.4), 0.0, 0.0]
    # Without token ids, about four characters per token.
    assert rewards_of(length, [THINKING], [short], ["42"]) == [pytest.approx(1 - math.ceil(len(short) / 4) / 100)]
    assert rewards_of(length, [THINKING], [short], [None]) == [None]
    over = rewards_of(length, [THINKING], [short], ["42"], completion_ids=[[1] * 500])
    assert over == [0.0]


def test_answer_plus_length_keeps_correct_above_wrong():
    length = make_length(50)
    comps = ["<think>\n" + "x " * 100 + "\n</think>\n\n\\boxed{42}", "<think>\nx\n</think>\n\n\\boxed{7}"]
    ids = [[1] * 50, [1] * 3]
    total = [a + b for a, b in zip(rewards_of(answer_reward, [THINKING] * 2, comps, ["42"] * 2),
                                   rewards_of(length, [THINKING] * 2, comps, ["42"] * 2, completion_ids=ids))]
    assert total[0] > total[1]


# ------------------------------------------------------------------------------------ build_rewards
def test_build_rewards_names_and_order():
    fns = build_rewards(RLConfig(rewards=["format", "answer", "length"]))
    assert [f.__name__ for f in fns] == ["format", "answer", "length"]
    assert [f.__name__ for f in build_rewards(RLConfig())] == ["answer", "format"]


@pytest.mark.parametrize("rewards, message", [
    (["answer", "answer"], "listed twice"),
    (["speed"], "unknown reward"),
    ([], "at least one reward"),
])
def test_build_rewards_refuses_bad_lists(rewards, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_rewards(RLConfig(rewards=rewards))
    assert info.value.kind == "config" and info.value.where == "rl.rewards"


def write(tmp_path, text: str, name: str = "my_rewards.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_user_reward_file_found_by_prefix_and_added_after_builtins(tmp_path):
    path = write(tmp_path, """
        import re

        def reward_mentions_answer(prompts, completions, answer, **kwargs):
            return [1.0 if a and a in c else 0.0 for c, a in zip(completions, answer)]

        def reward(prompts, completions, answer, **kwargs):
            return [float(len(c) < 20) for c in completions]

        def helper(x):  # not a reward: not named reward / reward_*
            return x

        def reward_none(prompts, completions, **kwargs):
            return [None for _ in completions]
    """)
    fns = build_rewards(RLConfig(rewards=["answer"], reward_file=str(path)))
    assert [f.__name__ for f in fns] == ["answer", "reward_mentions_answer", "reward", "reward_none"]
    got = [f(prompts=["p", "p"], completions=["it is 42", "a very long completion here"], answer=["42", "7"])
           for f in fns[1:]]
    assert got == [[1.0, 0.0], [1.0, 0.0], [None, None]]
    # Without an answer column the user's function still gets `answer` (all None).
    assert fns[2](prompts=["p"], completions=["short"]) == [1.0]


def test_user_reward_file_rewards_list(tmp_path):
    path = write(tmp_path, """
        def reward_a(prompts, completions, answer, **kwargs):
            return [1] * len(completions)

        def scored(prompts, completions, answer, **kwargs):
            return [0.5] * len(completions)

        REWARDS = ["scored"]
    """)
    fns = load_reward_file(path)
    assert [f.__name__ for f in fns] == ["scored"]
    assert fns[0](prompts=["p"], completions=["c"]) == [0.5]


@pytest.mark.parametrize("source, message, line, function", [
    ("def reward_x(prompts, completions, **kwargs)\n    return []\n", "syntax error", 1, ""),
    ("x = 1\n\n1 / 0\n", "ZeroDivisionError", 3, ""),
    ("def helper(prompts, completions, **kwargs):\n    return []\n", "no reward function found", None, ""),
    ("def reward_x(prompts, completions, answer):\n    return []\n", "no \\*\\*kwargs", 1, "reward_x"),
    ("def reward_x(p, c, **kwargs):\n    return []\n", "signature", 1, "reward_x"),
    ("def reward_answer_len(prompts, completions, **kw):\n    return []\nREWARDS = ['missing']\n",
     "not a function", None, "missing"),
    ("def answer(prompts, completions, **kw):\n    return []\nREWARDS = [answer]\n", "already taken", 1,
     "answer"),
])
def test_user_reward_file_load_errors_name_file_function_and_line(tmp_path, source, message, line, function):
    path = write(tmp_path, source)
    with pytest.raises(ConfigError, match=message) as info:
        build_rewards(RLConfig(rewards=["answer"], reward_file=str(path)))
    err = info.value
    assert err.kind == "config" and err.where == "rl.reward_file"
    assert str(path.resolve()) in err.source
    if line is not None:
        assert f"{path.resolve()}:{line}" in err.source
    if function:
        assert f"({function})" in err.source


@pytest.mark.parametrize("body, message, line", [
    ("    return [1.0]\n", "returned 1 values for 2 completions", 1),
    ("    return 3\n", "returned int, not a list", 1),
    ("    return ['a', 'b']\n", "returned 'a' for completion 0", 1),
    ("    return [float('nan'), 1.0]\n", "returned nan", 1),
    ("    x = 1\n    return [c.missing for c in completions]\n", "AttributeError", 3),
])
def test_user_reward_errors_when_called(tmp_path, body, message, line):
    path = write(tmp_path, "def reward_bad(prompts, completions, answer, **kwargs):\n" + body)
    fn, = load_reward_file(path)
    with pytest.raises(ConfigError, match=message) as info:
        fn(prompts=["p", "q"], completions=["a", "b"], answer=[None, None])
    assert info.value.kind == "config"
    assert f"{path.resolve()}:{line} (reward_bad)" in info.value.source


def test_missing_or_wrong_reward_file(tmp_path):
    with pytest.raises(ConfigError, match="not found") as info:
        build_rewards(RLConfig(reward_file=str(tmp_path / "nope.py")))
    assert info.value.where == "rl.reward_file"
    (tmp_path / "r.txt").write_text("def reward(prompts, completions, **k): return []\n")
    with pytest.raises(ConfigError, match="ending in .py"):
        load_reward_file(tmp_path / "r.txt")
    (tmp_path / "bin.py").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_reward_file(tmp_path / "bin.py")


def test_the_documented_example_reward_file_loads_and_scores(tmp_path):
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "train.md").read_text(encoding="utf-8")
    start = text.index("# my_rewards.py")
    code = text[start:text.index("```", start)]
    path = tmp_path / "my_rewards.py"
    path.write_text(code, encoding="utf-8")
    fns = build_rewards(RLConfig(rewards=["answer"], reward_file=str(path)))
    assert [f.__name__ for f in fns] == ["answer", "reward_chinese_answer", "reward_no_repeats"]
    comps = ["<think>\n想一想\n</think>\n\n答案是四十二", "<think>\nx\n</think>\n\n" + "same\n" * 10]
    assert fns[1](prompts=[THINKING] * 2, completions=comps, answer=["42", "42"]) == [1.0, 0.0]
    assert fns[2](prompts=[THINKING] * 2, completions=comps, answer=["42", "42"]) == [0.0, -1.0]


def test_rewards_read_completions_as_trl_decodes_them_with_qwen3s_tokenizer():
    """TRL decodes completions with skip_special_tokens: Qwen3's think tags are not special tokens,
    so they stay in the text, and the end-of-turn token goes."""
    from transformers import AutoTokenizer

    from core.data.tokenizer import qwen3_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    ids = tok("<think>\n6 sevens\n</think>\n\nIt is \\boxed{42}.<|im_end|>", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    assert text == "<think>\n6 sevens\n</think>\n\nIt is \\boxed{42}."
    msgs = [{"role": "user", "content": "What is 6 * 7?"}]
    thinking = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    direct = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert format_reward(prompts=[thinking], completions=[text]) == [1.0]
    assert answer_reward(prompts=[thinking], completions=[text], answer=["42"]) == [1.0]
    assert format_reward(prompts=[direct, direct], completions=["It is \\boxed{42}.", text]) == [1.0, 0.5]
