"""The evaluation's generation checks run in batches: N prompts x both panes per forward pass."""

from __future__ import annotations

from core.config import EvalConfig
from core.eval.evaluate import evaluate
from tests.chat.test_batch import ForwardCounter


def test_thinking_and_accuracy_checks_generate_prompts_and_panes_together(fake_run, peft_engine):
    cfg = EvalConfig(loss_rows=0, control_prompts=3, control_max_new_tokens=8, accuracy_rows=2,
                     answer_max_new_tokens=8, generate_batch=8, greedy=True)
    progress = []
    with ForwardCounter(peft_engine) as fc:
        result = evaluate(fake_run, cfg, engine=peft_engine, save=False, progress=lambda *a: progress.append(a))
    # thinking off, thinking on: 3 prompts x 2 panes each; accuracy: 2 rows x 2 panes (one thinking mode
    # per row, so one or two batches)
    assert fc.batches.count(6) >= 2 and max(fc.batches) == 6
    assert result["thinking"]["base"]["n"] == 3 and result["accuracy"]["base"]["total"] == 2
    thinking = [p for p in progress if p[0] == "thinking"]
    assert thinking[-1][1:] == (12, 12) and [p[1] for p in thinking] == sorted(p[1] for p in thinking)
