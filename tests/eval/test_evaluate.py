"""Evaluation numbers on a known case: scripted mock models with closed-form loss and designed replies."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from core.chat.engine import ChatEngine
from core.config import EvalConfig
from core.eval.evaluate import (
    EvalError,
    answer_rows,
    control_prompts,
    evaluate,
    load_results,
    mix_dir_of,
    results_figure,
    results_table,
)
from tests.chat.mocks import ByteTokenizer, ScriptLM

CHEAT = 3.0


def base_script(prompt: str) -> str:
    # ignores the thinking switch and answers wrongly
    return "<think>\nhmm\n</think>\n\nThe answer is \\boxed{41}."


def tuned_script(prompt: str) -> str:
    question = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    answer = "\\boxed{42}" if "6 * 7" in question else "\\boxed{2.5}" if "10 / 4" in question else "Hello!"
    if prompt.endswith("</think>\n\n"):  # thinking off: answer at once
        return answer
    return f"<think>\nLet me work it out.\n</think>\n\n{answer}"


@pytest.fixture
def run_copy(fake_run, tmp_path):
    return shutil.copytree(fake_run, tmp_path / fake_run.name)


def scripted_engine() -> ChatEngine:
    return ChatEngine(ScriptLM(base_script), ByteTokenizer(), tuned_model=ScriptLM(tuned_script, cheat=CHEAT),
                      info={"base": "mock", "tuned": "mock-tuned"})


def test_known_case(run_copy):
    cfg = EvalConfig(control_prompts=3, accuracy_rows=10, greedy=True)
    progress = []
    result = evaluate(run_copy, cfg, engine=scripted_engine(), progress=lambda *a: progress.append(a))
    # 1. loss: uniform logits give ln(V); the "cheating" model a closed form
    assert result["loss"]["base"]["loss"] == pytest.approx(math.log(258), abs=1e-5)
    assert result["loss"]["base"]["ppl"] == pytest.approx(258, rel=1e-4)
    per_token = -math.log(math.exp(CHEAT) / (math.exp(CHEAT) + 257))
    assert result["loss"]["tuned"]["loss"] == pytest.approx(per_token, abs=1e-5)
    assert result["loss"]["base"]["tokens"] == result["loss"]["tuned"]["tokens"] > 0
    assert result["loss"]["base"]["rows"] == 3
    # 2. thinking-mode control: base ignores the switch, tuned obeys
    t = result["thinking"]
    assert (t["base"]["off_rate"], t["base"]["on_rate"], t["base"]["n"]) == (0.0, 1.0, 3)
    assert (t["tuned"]["off_rate"], t["tuned"]["on_rate"]) == (1.0, 1.0)
    # 3. accuracy: two rows carry an answer (\boxed{42}; expected_answer 5/2 = 2.5)
    a = result["accuracy"]
    assert (a["base"]["correct"], a["base"]["total"]) == (0, 2)
    assert (a["tuned"]["correct"], a["tuned"]["rate"]) == (2, 1.0)
    # saved, and readable back
    saved = json.loads((run_copy / "eval.json").read_text())
    assert saved["loss"] == result["loss"] and load_results(run_copy)["thinking"]["tuned"]["n"] == 3
    stages = {p[0] for p in progress}
    assert {"loss", "thinking", "accuracy"} <= stages
    # the table and chart
    rows = {r["metric"]: r for r in results_table(result)}
    assert rows["think_off"]["change"] == 1.0 and rows["think_off"]["better"] is True
    assert rows["loss"]["better"] is True and rows["accuracy"]["tuned"] == 1.0
    fig = results_figure(result)
    assert {tr.name for tr in fig.data} == {"base", "fine-tuned"}


def test_limit_and_checkpoint_result_name(run_copy):
    ck = run_copy / "checkpoints" / "checkpoint-2"
    result = evaluate(ck, EvalConfig(control_prompts=5, accuracy_rows=0, greedy=True), engine=scripted_engine(),
                      limit=1)
    assert result["loss"]["base"]["rows"] == 1 and result["thinking"]["base"]["n"] == 1
    assert "accuracy" not in result
    assert (run_copy / "eval-checkpoint-2.json").is_file()


def test_missing_eval_split_is_a_clear_error(run_copy, tmp_path):
    from tests.chat.fixtures import conv, make_mix

    mix = make_mix(tmp_path / "noeval", [conv("a", "b")], [])
    with pytest.raises(EvalError, match="no eval split"):
        evaluate(run_copy, EvalConfig(), engine=scripted_engine(), mix_dir=mix)
    assert mix_dir_of(run_copy).name == "mix"


def test_control_prompts_fill_up_with_fallbacks(small_mix):
    from core.data.mixdir import read_mix_dir

    _train, evals, _ = read_mix_dir(small_mix)
    prompts = control_prompts(evals, 5, seed=0)
    assert len(prompts) == 5 and [p[-1].content for p in prompts[:3]] == [c.messages[0].content for c in evals]
    assert len(answer_rows(evals)) == 2


def test_real_model_eval_runs_end_to_end(fake_run, tmp_path):
    """The real path: load the run (demo model + adapter) and evaluate it briefly on the CPU."""
    from core.config import ChatConfig

    run = shutil.copytree(fake_run, tmp_path / "r")
    result = evaluate(run, EvalConfig(control_prompts=1, control_max_new_tokens=8, accuracy_rows=1,
                                      answer_max_new_tokens=8), ChatConfig(device="cpu"))
    assert result["panes"] == ["base", "tuned"]
    assert result["loss"]["base"]["loss"] != result["loss"]["tuned"]["loss"]
    assert result["model"]["device"] == "cpu"
