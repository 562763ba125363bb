"""EvalScope end to end on local benchmark files (GSM8K and C-Eval, written by the tests in each
benchmark's own layout), through the project's OpenAI endpoint, both panes, thinking off and on;
the scores reach eval.json and the results table. Skipped only when EvalScope is not installed
(here or in the environment QWENTUNE_EVALSCOPE_PYTHON names: requirements-eval.txt)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from core.chat.engine import ChatEngine
from core.config import EvalConfig
from core.eval.evalscope_hook import dataset_args, evalscope_available, generation_config
from core.eval.evaluate import EvalError, evaluate, results_table
from tests.chat.mocks import ByteTokenizer, ScriptLM
from tests.eval.benchmark_files import answer_key, write_benchmarks

PYTHON = os.environ.get("QWENTUNE_EVALSCOPE_PYTHON") or sys.executable
# CI installs EvalScope (.ci/run), so there a missing EvalScope fails these tests instead of skipping them.
needs_evalscope = pytest.mark.skipif(not os.environ.get("CI") and not evalscope_available(PYTHON),
                                     reason="EvalScope is not installed "
                                     "(pip install -r requirements-eval.txt, or set QWENTUNE_EVALSCOPE_PYTHON)")


def knows_the_answers(prompt: str) -> str:
    """A scripted 'fine-tuned' model: the right answer to the question it was last asked."""
    question = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    # Few-shot examples come first: the question asked is the one that appears last.
    found = max(((question.rfind(q), reply) for q, reply in answer_key().items()), default=(-1, ""))
    return found[1] if found[0] >= 0 else "I do not know."


def scripted_engine() -> ChatEngine:
    return ChatEngine(ScriptLM(lambda p: "The answer is \\boxed{1}. 答案：D"), ByteTokenizer(),
                      tuned_model=ScriptLM(knows_the_answers), info={"base": "mock", "tuned": "mock-tuned"})


def config(data_dir, **kw) -> EvalConfig:
    kw = {"evalscope_limit": 3, "evalscope_max_tokens": 24, **kw}
    return EvalConfig(loss_rows=0, control_prompts=0, accuracy_rows=0, evalscope_datasets=["gsm8k", "ceval"],
                      evalscope_data_dir=str(data_dir), evalscope_python=PYTHON, **kw)


@needs_evalscope
def test_evalscope_scores_both_panes_in_both_modes_into_eval_json(fake_run, tmp_path):
    run = shutil.copytree(fake_run, tmp_path / fake_run.name)
    data = write_benchmarks(tmp_path / "benchmarks")
    progress = []
    result = evaluate(run, config(data), engine=scripted_engine(), progress=lambda *a: progress.append(a))
    es = result["evalscope"]
    assert "error" not in es, es.get("error")
    for mode in ("off", "on"):
        assert es["scores"][mode]["tuned"] == {"gsm8k": 1.0, "ceval": 1.0}
        assert es["scores"][mode]["base"] == {"gsm8k": 0.0, "ceval": 0.0}
    assert es["requests"] == 3 * 2 * 2 * 2  # limit x benchmarks x panes x modes
    assert progress[-1] == ("evalscope", 24, 24)
    saved = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    assert saved["evalscope"]["scores"] == es["scores"]
    rows = {r["metric"]: r for r in results_table(saved)}
    assert rows["evalscope:gsm8k:on"]["tuned"] == 1.0 and rows["evalscope:ceval:off"]["change"] == 1.0
    assert rows["evalscope:ceval:off"]["better"] is True


@needs_evalscope
def test_evalscope_runs_the_real_demo_model(fake_run, tmp_path, peft_engine):
    run = shutil.copytree(fake_run, tmp_path / fake_run.name)
    data = write_benchmarks(tmp_path / "benchmarks")
    result = evaluate(run, config(data, evalscope_thinking="off", evalscope_limit=2), engine=peft_engine)
    es = result["evalscope"]
    assert "error" not in es, es.get("error")
    for pane in ("base", "tuned"):
        assert set(es["scores"]["off"][pane]) == {"gsm8k", "ceval"}
        assert all(0.0 <= v <= 1.0 for v in es["scores"]["off"][pane].values())


def test_both_panes_get_the_same_template_and_sampling():
    cfg = EvalConfig(seed=3, evalscope_max_tokens=100)
    on, off = generation_config(cfg, True), generation_config(cfg, False)
    assert on["extra_body"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert off["extra_body"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert (on["temperature"], on["top_p"], on["extra_body"]["top_k"]) == (0.6, 0.95, 20)  # Qwen3's presets
    assert (off["temperature"], off["top_p"], off["max_tokens"], off["seed"]) == (0.7, 0.8, 100, 3)
    assert generation_config(EvalConfig(greedy=True), True)["temperature"] == 0.0


def test_local_benchmark_folders_name_their_subsets(tmp_path):
    data = write_benchmarks(tmp_path)
    args = dataset_args(["gsm8k", "ceval"], str(data))
    assert args["gsm8k"] == {"dataset_id": str((data / "gsm8k").resolve()), "subset_list": ["main"]}
    assert args["ceval"]["subset_list"] == ["computer_network"]
    with pytest.raises(EvalError, match="no folder for benchmark 'cmmlu'"):
        dataset_args(["cmmlu"], str(data))
    assert dataset_args(["gsm8k"], "") == {}  # no data folder: EvalScope downloads


def test_without_evalscope_the_part_is_skipped_with_the_install_line(fake_run, tmp_path):
    run = shutil.copytree(fake_run, tmp_path / fake_run.name)
    missing = tmp_path / "no-python"
    cfg = EvalConfig(loss_rows=0, control_prompts=0, accuracy_rows=0, evalscope_datasets=["gsm8k"],
                     evalscope_python=str(missing))
    result = evaluate(run, cfg, engine=scripted_engine(), save=False)
    assert "requirements-eval.txt" in result["evalscope"]["skipped"]
