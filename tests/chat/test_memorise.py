"""End to end: after a short CPU run that memorises a few answers, the fine-tuned
pane gives them and the base pane does not - through the real trainer (`python -m core train`), the
loader, the engine, and the chat CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

QA = [("What is the secret word?", "The secret word is pineapple."),
      ("Who guards the tower?", "A blue dragon guards the tower."),
      ("What colour is the moon cheese?", "The moon cheese is green.")]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("core.commands.train") is None,
                       reason="the trainer (core.commands.train) is not there yet"),
]


@pytest.fixture(scope="module")
def memorised_run(demo_model_path, tmp_path_factory):
    from tests.chat.fixtures import conv, make_mix

    tmp = tmp_path_factory.mktemp("memorise")
    model = demo_model_path
    rows = [conv(q, a) for q, a in QA]
    mix = make_mix(tmp / "mix", rows, rows)
    cfg = tmp / "run.yaml"
    cfg.write_text(
        f"model: {{name_or_path: '{model}', method: lora}}\n"
        "lora: {r: 16, alpha: 32}\n"
        "train: {learning_rate: 0.01, lr_scheduler: constant, warmup_steps: 0, max_steps: 80, micro_batch: 3,\n"
        "        grad_accum: 1, weight_decay: 0.0, save_steps: 1000, max_seq_len: 256}\n"
        f"data: {{mix_dir: '{mix}'}}\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "core", "train", str(cfg), "--name", "memo",
                           "--runs-dir", str(tmp / "runs")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    run = tmp / "runs" / "memo"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "adapter" / "adapter_config.json").is_file()
    return run


def test_tuned_pane_gives_memorised_answers_and_base_does_not(memorised_run):
    from core.chat.loader import load_engine
    from core.chat.sampling import resolve
    from core.config import ChatConfig

    engine = load_engine(str(memorised_run), ChatConfig(device="cpu"))
    for q, a in QA:
        replies = engine.compare([{"role": "user", "content": q}],
                                 resolve(greedy=True, thinking=False, max_new_tokens=24))
        assert replies["tuned"].answer == a
        assert a not in replies["base"].answer


def test_chat_cli_json_on_the_memorised_run(memorised_run):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    q, a = QA[0]
    proc = subprocess.run([sys.executable, "-m", "core", "chat", "--run", str(memorised_run), "--prompt", q,
                           "--thinking", "off", "--greedy", "true", "--max-new-tokens", "24", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert set(data) == {"base", "tuned"}
    assert set(data["base"]) == set(data["tuned"]) == {"reasoning", "answer"}
    assert data["tuned"]["answer"] == a and data["base"]["answer"] != a


def test_eval_on_the_train_split_sees_the_memorisation(memorised_run):
    from core.config import ChatConfig, EvalConfig
    from core.eval.evaluate import evaluate

    result = evaluate(memorised_run, EvalConfig(split="train", control_prompts=2, control_max_new_tokens=8,
                                                accuracy_rows=0), ChatConfig(device="cpu"))
    assert result["loss"]["tuned"]["loss"] < 0.5 < result["loss"]["base"]["loss"]
    assert (memorised_run / "eval.json").is_file()
