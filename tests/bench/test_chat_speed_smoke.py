"""bench/chat_speed.py end to end on the CPU with the demo model and tiny numbers, so a broken script
fails here before GPU time is spent on it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_chat_speed_runs_every_phase_and_records_one_line(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/chat_speed.py", "--shapes", "demo", "--device", "cpu",
                           "--new-tokens", "6", "--eval-prompts", "3", "--eval-tokens", "4", "--legacy-tokens", "4",
                           "--legacy-eval-prompts", "1", "--threads", "1", "--work", str(tmp_path / "work"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [json.loads(x) for x in (out / "chat_speed.jsonl").read_text().splitlines()]
    assert line["card"] == "cpu" and line["shape"] == "demo"
    eng = line["engine"]
    assert "error" not in eng, eng.get("error")
    assert eng["compare"]["per_pane"] == {"base": 6, "tuned": 6} or eng["compare"]["tokens"] > 0
    assert eng["compare"]["tokens_per_s"] > 0 and eng["single"]["tokens_per_s"] > 0
    assert eng["ttft_s"] > 0 and eng["split"]["steps"] > 0 and eng["split"]["forward_ms"] > 0
    assert eng["decode"]["batching"].startswith("both panes in one forward pass")
    assert eng["eval"]["prompts"] == 3 and eng["eval"]["seconds"] > 0
    assert eng["legacy_compare"]["tokens_per_s"] > 0 and eng["legacy_eval"]["seconds_extrapolated"] > 0
    assert line["unsloth"] == {"skipped": "no CUDA GPU (Unsloth needs one)"}
    assert eng["tuned_differs_from_base"] is True and eng["base_row_vs_alone_same_prefix"].startswith("6/")
    assert line["ratios"]["compare_vs_legacy"] > 0
    assert line["targets"]["compare_vs_unsloth_batch2>=1.0"] is None  # not measured: null, not false
