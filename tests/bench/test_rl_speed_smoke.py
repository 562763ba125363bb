"""bench/rl_speed.py end to end on the CPU: the tiny shape, the PEFT backend, every figure through
`python -m core train`, so a broken GPU benchmark breaks here first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_rl_speed_records_every_figure(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/rl_speed.py", "--shape", "tiny", "--backend", "peft",
                           "--work", str(tmp_path / "work"), "--out", str(out), "--steps", "3", "--warmup", "1",
                           "--generations", "2", "--completion-len", "8", "--prompt-len", "16",
                           "--reply-len", "16"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "rl_speed.jsonl").read_text().splitlines()]
    assert [r["figure"] for r in rows] == ["grpo-0.6b", "grpo-4b", "dpo-8b", "grpo-0.6b-peft"]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["shape"] == "tiny" and r["backend"] == "peft" and r["timed_steps"] == 2
        assert r["steps_per_s"] > 0 and r["tokens_per_s"] > 0
    grpo, dpo = rows[0], rows[2]
    assert grpo["stage"] == "grpo" and grpo["num_generations"] == 2 and grpo["rollout"] == "chat"
    assert 1 <= grpo["completion_mean_length"] <= 8
    assert dpo["stage"] == "dpo" and dpo["margin_last"] is not None
