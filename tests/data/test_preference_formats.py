"""Preference and prompt-set rows of every accepted format -> Conversation; bad rows are counted drops
with file:line; a mix holds one kind of rows and records it (real Qwen3 tokenizer)."""

from __future__ import annotations

import json

import pytest

from core.config import MixConfig, SourceConfig
from core.data.conversation import Message
from core.data.formats import KindError, RowError, detect_format, natural_kind, to_conversation
from core.data.mix import build_mix
from core.data.mixdir import mix_kind, read_mix_dir
from core.data.render import render_preference, render_prompt, render_texts
from core.data.sources import DataError


def conv(data, **kw):
    return to_conversation(data, "t.jsonl:1", **kw)


def reasons(data, **kw) -> str:
    with pytest.raises(RowError) as info:
        conv(data, **kw)
    return info.value.reason


@pytest.fixture(scope="module")
def qwen3():
    from core.data.tokenizer import load_tokenizer

    return load_tokenizer("qwen3")


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ preference rows
def test_trl_standard_strings_with_think_tags():
    c, fmt = conv({"prompt": "2 + 3?", "chosen": "<think>\nAdd.\n</think>\n\n5", "rejected": "6"})
    assert fmt == "preference" and c.kind == "preference"
    assert c.messages == [Message("user", "2 + 3?"), Message("assistant", "5", reasoning="Add.")]
    assert c.rejected == Message("assistant", "6")


def test_trl_conversational_lists_keep_system_and_reasoning_fields():
    c, fmt = conv({"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
                   "chosen": [{"role": "assistant", "content": "Hello!", "reasoning_content": "Greet."}],
                   "rejected": [{"role": "assistant", "content": "Go away."}]})
    assert fmt == "preference"
    assert [m.role for m in c.messages] == ["system", "user", "assistant"]
    assert c.messages[-1].reasoning == "Greet." and c.rejected.content == "Go away."


def test_trl_implicit_prompt_shares_the_conversation_before_the_replies():
    first = [{"role": "user", "content": "Hi"}]
    c, fmt = conv({"chosen": [*first, {"role": "assistant", "content": "Hello"}],
                   "rejected": [*first, {"role": "assistant", "content": "No"}]})
    assert fmt == "preference" and c.messages == [Message("user", "Hi"), Message("assistant", "Hello")]
    assert c.rejected.content == "No"
    assert reasons({"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
                    "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}]}) \
        == "invalid reply"


def test_ultrafeedback_rows_keep_the_prompt_in_the_conversations():
    user = {"role": "user", "content": "Name a prime."}
    row = {"prompt": "Name a prime.", "prompt_id": "ab12", "score_chosen": 8.0, "score_rejected": 3.0,
           "chosen": [user, {"role": "assistant", "content": "7"}],
           "rejected": [user, {"role": "assistant", "content": "8"}]}
    c, fmt = conv(row)
    assert fmt == "preference" and c.messages == [Message("user", "Name a prime."), Message("assistant", "7")]
    assert c.rejected.content == "8"
    assert reasons(dict(row, prompt="Something else.")) == "invalid reply"


def test_llamafactory_sharegpt_ranking_rows():
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                             {"from": "human", "value": "2 + 2?"}],
           "chosen": {"from": "gpt", "value": "<think>\nTwo and two.\n</think>\n\n4"},
           "rejected": {"from": "gpt", "value": "5"}, "system": "Be brief."}
    c, fmt = conv(row)
    assert fmt == "sharegpt_preference"
    assert [m.role for m in c.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert c.messages[-1] == Message("assistant", "4", reasoning="Two and two.")
    assert c.rejected == Message("assistant", "5")


def test_llamafactory_alpaca_ranking_rows():
    c, fmt = conv({"instruction": "翻译成英文", "input": "你好", "chosen": "Hello", "rejected": "Goodbye"})
    assert fmt == "alpaca_preference"
    assert c.messages == [Message("user", "翻译成英文\n你好"), Message("assistant", "Hello")]
    assert c.rejected.content == "Goodbye"


def test_ms_swift_messages_with_rejected_response():
    msgs = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    c, fmt = conv({"messages": msgs, "rejected_response": "<think>\nHmm.\n</think>\n\nLyon."})
    assert fmt == "messages_preference"
    assert c.messages[-1].content == "Paris." and c.rejected == Message("assistant", "Lyon.", reasoning="Hmm.")
    c, _ = conv({"messages": msgs, "rejected_messages": [msgs[0], {"role": "assistant", "content": "Rome."}]})
    assert c.rejected.content == "Rome."


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "Q", "chosen": "same", "rejected": " same "}, "chosen equals rejected"),
    ({"prompt": "Q", "chosen": "A"}, "no rejected reply"),
    ({"prompt": "Q", "chosen": "A", "rejected": None}, "no rejected reply"),
    ({"prompt": "Q", "chosen": "   ", "rejected": "B"}, "empty reply"),
    ({"prompt": "Q", "chosen": "A", "rejected": ""}, "empty reply"),
    ({"prompt": "", "chosen": "A", "rejected": "B"}, "empty field"),
    ({"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
      "chosen": "B", "rejected": "C"}, "prompt does not end with a user turn"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
      "chosen": {"from": "gpt", "value": "B"}, "rejected": {"from": "gpt", "value": "C"}},
     "prompt does not end with a user turn"),
    ({"messages": [{"role": "user", "content": "Q"}], "rejected_response": "B"}, "no chosen reply"),
    ({"prompt": "Q", "chosen": "<think>\nopen", "rejected": "B"}, "unclosed <think>"),
    ({"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"}, "invalid reply"),
])
def test_bad_preference_rows_are_refused_with_a_reason(row, reason):
    assert reasons(row) == reason


def test_column_mapping_names_the_preference_columns():
    c, fmt = conv({"question": "Q?", "good": "Yes.", "bad": "No."},
                  columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert fmt == "preference" and c.messages[-1].content == "Yes." and c.rejected.content == "No."
    c, fmt = conv({"msgs": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
                   "worse": "B."}, columns={"messages": "msgs", "rejected_response": "worse"})
    assert fmt == "messages_preference" and c.rejected.content == "B."


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "Q", "chosen": "A", "rejected": "bad\x00"}, "NUL character"),
    ({"prompt": "Q", "chosen": "A", "rejected": float("nan")}, "NaN or Infinity"),
    ({"prompt": "Q", "chosen": [7], "rejected": "B"}, "invalid reply"),
])
def test_hostile_replies_are_dropped_not_trained(row, reason):
    assert reasons(row) == reason


def test_a_number_as_reply_is_kept_as_text_with_a_note():
    notes: list = []
    c, _ = to_conversation({"prompt": "6 * 7?", "chosen": 42, "rejected": "41"}, "t.jsonl:1", notes=notes)
    assert c.messages[-1].content == "42" and notes[0][0] == "number as text"


def test_replies_with_reasoning_render_prompt_plus_chosen_as_sft(qwen3):
    for row in ({"prompt": "2 + 3?", "chosen": "<think>\nAdd.\n</think>\n\n5", "rejected": "6"},
                {"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "A"},
                 "rejected": {"from": "gpt", "value": "<think>\nx\n</think>\n\nB"}}):
        c, _ = conv(row)
        p = render_preference(c, qwen3)
        assert p.prompt + p.chosen == render_texts([c], qwen3)[0]
        assert p.prompt + p.rejected == render_texts([c.with_reply(c.rejected)], qwen3)[0]
        assert p.chosen.endswith("<|im_end|>\n") and p.rejected.endswith("<|im_end|>\n")


# ---------------------------------------------------------------------------------- prompt rows
@pytest.mark.parametrize("row, fmt, answer, user", [
    ({"problem": "What is 17 + 25?", "expected_answer": "42"}, "openmath", "42", "What is 17 + 25?"),
    ({"prompt": [{"role": "user", "content": "Solve 1+1."}], "reward_model": {"ground_truth": "2", "style": "rule"},
      "data_source": "math_dapo"}, "prompt", "2", "Solve 1+1."),
    ({"prompt": "Solve 2+2.", "ground_truth": 4}, "prompt", "4", "Solve 2+2."),
    ({"question": "Tom has 3 bags of 2 apples. How many apples?", "answer": "3 * 2 = 6\n#### 6"}, "gsm8k", "6",
     "Tom has 3 bags of 2 apples. How many apples?"),
    ({"prompt": [{"role": "user", "content": "Area?"}], "solution": "It is $\\boxed{12}$."}, "prompt", "12", "Area?"),
])
def test_prompt_sets_end_with_the_user_turn_and_carry_the_answer(row, fmt, answer, user):
    c, used = conv(row)
    assert used == fmt and natural_kind(row, fmt) == "prompt" and c.kind == "prompt"
    assert c.messages == [Message("user", user)] and c.meta["expected_answer"] == answer


def test_any_format_gives_a_prompt_set_its_question_when_the_mix_is_prompt():
    c, fmt = conv({"prompt": "What is 5 * 5?", "answer": "25"}, kind="prompt")
    assert fmt == "reasoning" and c.messages == [Message("user", "What is 5 * 5?")]
    assert c.meta == {"expected_answer": "25"}
    c, _ = conv({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "So $\\boxed{7}$."}]}, kind="prompt")
    assert [m.role for m in c.messages] == ["system", "user"] and c.meta["expected_answer"] == "7"
    c, _ = conv({"instruction": "Add", "input": "3 and 4", "output": "7"}, kind="prompt")
    assert c.messages == [Message("user", "Add\n3 and 4")] and c.meta["expected_answer"] == "7"
    # In an SFT mix a GSM8K row is a reasoning row that keeps its answer for evaluation.
    c, fmt = conv({"question": "Q", "answer": "work\n#### 6"}, kind="sft")
    assert fmt == "gsm8k" and c.messages[-1].content == "work\n#### 6" and c.meta["expected_answer"] == "6"


@pytest.mark.parametrize("row", [
    {"prompt": "What?", "answer": "a long worked solution\nthat never states a final answer"},
    {"prompt": [{"role": "user", "content": "Q"}], "reward_model": {"ground_truth": ""}},
    {"problem": "Q", "expected_answer": float("nan")},
])
def test_prompt_rows_without_an_answer_are_refused(row):
    assert reasons(row, kind="prompt") == "no reference answer"


def test_rows_of_another_kind_raise_kind_errors():
    with pytest.raises(KindError) as info:
        conv({"prompt": "Q", "chosen": "A", "rejected": "B"}, kind="sft")
    assert info.value.reason == "preference row in an sft mix"
    with pytest.raises(KindError):
        conv({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
             kind="preference")
    with pytest.raises(KindError):
        conv({"prompt": [{"role": "user", "content": "Q"}], "reward_model": {"ground_truth": "1"}}, kind="sft")


def test_detection_keeps_sft_rows_sft():
    assert detect_format({"instruction": "a", "input": "", "output": "b"}) == "alpaca"
    assert detect_format({"prompt": "a", "answer": "b"}) == "reasoning"
    assert detect_format({"problem": "a", "generated_solution": "b", "expected_answer": "1"}) == "openmath"
    assert natural_kind({"problem": "a", "generated_solution": "b"}, "openmath") == "sft"


# ------------------------------------------------------------------------------------------ mix
def test_preference_mix_counts_drops_with_file_line_and_measures_the_longer_reply(tmp_path, qwen3):
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"<think>\n{i} and one.\n</think>\n\n{i + 1}",
             "rejected": f"{i + 2}" + " wrong" * (40 if i == 0 else 0)} for i in range(6)]
    rows += [{"prompt": "Q", "chosen": "A", "rejected": "A"}, {"prompt": "Q", "chosen": "A"},
             {"prompt": "Q", "chosen": "", "rejected": "B"}]
    src = write(tmp_path / "pairs.jsonl", rows)
    result = build_mix(MixConfig(sources=[SourceConfig(path=str(src))], max_seq_len=60, shuffle=False), qwen3,
                       tmp_path / "mix")
    drops = result.drops["pairs"]
    assert drops["chosen equals rejected"]["examples"] == [f"{src}:7: the two replies are the same text; the pair "
                                                          "teaches nothing"]
    assert drops["no rejected reply"]["examples"][0].startswith(f"{src}:8")
    assert drops["empty reply"]["examples"][0].startswith(f"{src}:9")
    assert drops["longer than max_seq_len"]["examples"][0].startswith(f"{src}:1")  # the long rejected reply
    assert result.kind == "preference" and result.total == 5
    first = result.train[0]
    p = render_preference(first, qwen3)
    n = [len(qwen3(t, add_special_tokens=False)["input_ids"]) for t in (p.prompt, p.chosen, p.rejected)]
    assert result.rows[0]["n_tokens"] == n[0] + max(n[1:])
    assert result.rows[0]["text"] == p.prompt + p.chosen
    train, _, manifest = read_mix_dir(tmp_path / "mix")
    assert manifest["kind"] == "preference" and mix_kind(manifest) == "preference"
    assert [c.rejected.content for c in train] == [r["rejected"] for r in rows[1:6]]
    assert train[0].messages[-1].reasoning == "1 and one."


def test_prompt_mix_from_samples_records_answers_and_prompt_lengths(tmp_path, qwen3):
    result = build_mix(MixConfig(sources=[SourceConfig(path="samples/math_prompts")], shuffle=False), qwen3,
                       tmp_path / "mix")
    assert result.kind == "prompt" and result.total == 60
    train, _, manifest = read_mix_dir(tmp_path / "mix")
    assert manifest["kind"] == "prompt"
    assert all(c.kind == "prompt" and c.meta["expected_answer"] for c in train)
    text = render_prompt(train[0], qwen3)
    assert result.rows[0]["text"] == text and text.endswith("<|im_start|>assistant\n")
    assert result.rows[0]["n_tokens"] == len(qwen3(text, add_special_tokens=False)["input_ids"])
    # Every toy problem's answer is right.
    import re

    for c in train:
        a, op, b = re.search(r"(\d+)\s*(\+|-|\*|加|减|乘以|plus|minus|times)\s*(\d+)", c.messages[-1].content).groups()
        value = {"+": int(a) + int(b), "加": int(a) + int(b), "plus": int(a) + int(b), "-": int(a) - int(b),
                 "减": int(a) - int(b), "minus": int(a) - int(b)}.get(op, int(a) * int(b))
        assert c.meta["expected_answer"] == str(value), c.origin


def test_preference_sample_is_bilingual_with_reasoning(qwen3):
    result = build_mix(MixConfig(sources=[SourceConfig(path="samples/preference_zh_en")]), qwen3)
    assert result.kind == "preference" and result.total == 40 and not result.drops["preference_zh_en"]
    assert sum(1 for c in result.train if c.messages[-1].reasoning) >= 10
    assert any(re_cjk(c.messages[0].content) for c in result.train)
    assert any(not re_cjk(c.messages[0].content) for c in result.train)


def re_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_a_mix_refuses_to_mix_kinds_naming_the_source(tmp_path, qwen3):
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    with pytest.raises(DataError, match=r"source 'chat_en' holds conversations .* this mix holds preference pairs "
                                        r"\(the kind of its first source 'pairs'"):
        build_mix(MixConfig(sources=[SourceConfig(path=str(pairs)), SourceConfig(path="samples/chat_en")]), qwen3)
    with pytest.raises(DataError, match=r"source 'pairs' holds preference pairs .*kind: sft in the mix settings.*"
                                        r"set kind: preference"):
        build_mix(MixConfig(kind="sft", sources=[SourceConfig(path=str(pairs))]), qwen3)


def test_explicit_prompt_kind_reads_sft_sources_as_questions(qwen3):
    result = build_mix(MixConfig(kind="prompt", sources=[SourceConfig(path="samples/math_reasoning")]), qwen3)
    assert result.kind == "prompt" and result.total > 30
    assert all(c.messages[-1].role == "user" and c.meta["expected_answer"] for c in result.train)


def test_dedupe_tells_pairs_apart_by_their_rejected_reply(tmp_path, qwen3):
    src = write(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"},
                                       {"prompt": "Q", "chosen": "A", "rejected": "C"},
                                       {"prompt": "Q", "chosen": "A", "rejected": "B"}])
    result = build_mix(MixConfig(sources=[SourceConfig(path=str(src))], dedupe=True), qwen3)
    assert result.total == 2
    assert result.drops["p"]["exact duplicate"]["examples"] == [f"{src}:3: same text as {src}:1"]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_mixes_preference_and_prompt_files_and_previews_them(tmp_path, capsys):
    from core.cli import main
    from tests.conftest import ROOT

    samples = ROOT / "presets" / "samples"
    assert main(["mix", str(samples / "preference_zh_en.jsonl"), "--out", str(tmp_path / "p"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "preference" and summary["total"] == 40
    assert json.loads((tmp_path / "p" / "manifest.json").read_text(encoding="utf-8"))["kind"] == "preference"
    assert main(["mix", str(samples / "math_prompts.jsonl"), "--dry-run", "--preview", "1"]) == 0
    out = capsys.readouterr().out
    assert "kind: prompt" in out and "[reference answer]" in out and out.count("--- preview") == 1
    assert main(["mix", str(samples / "preference_zh_en.jsonl"), "--dry-run", "--preview", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("[chosen]") == 2 and out.count("[rejected]") == 2
    assert main(["mix", str(samples / "preference_zh_en.jsonl"), "--dry-run", "--kind", "prompt"]) == 2
    assert "source 'preference_zh_en' holds preference pairs" in capsys.readouterr().err


@pytest.mark.parametrize("preset, kind, total",
                         [("preference_pairs", "preference", 40), ("math_prompts", "prompt", 60)])
def test_stage_mix_presets_build(preset, kind, total, qwen3):
    from core.config import load_mix_config
    from tests.conftest import ROOT

    cfg = load_mix_config(ROOT / "presets" / "mixes" / f"{preset}.yaml")
    result = build_mix(cfg, qwen3)
    assert cfg.kind == kind and result.kind == kind and result.total == total
