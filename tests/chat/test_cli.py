"""`python -m core chat` and `python -m core eval` from the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from core.cli import main
from tests.conftest import ROOT


def test_chat_json_shape_in_a_real_process(fake_run):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "core", "chat", "--run", str(fake_run), "--prompt", "Hello",
                           "--json", "--max-new-tokens", "6", "--seed", "3", "--thinking", "off", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    assert list(data) == ["base", "tuned"]
    assert all(set(v) == {"reasoning", "answer"} for v in data.values())
    assert data["base"]["reasoning"] == "" and data["tuned"]["reasoning"] == ""


def test_chat_text_output_and_bad_target(fake_run, tmp_path, capsys):
    assert main(["chat", "--run", str(fake_run), "--prompt", "Hi", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "=== base model: demo" in out and "=== fine-tuned: demo-lora-test" in out and "tokens/s" in out
    assert main(["chat", "--run", str(tmp_path / "missing"), "--prompt", "Hi"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_eval_cli_json_table_and_serving(fake_run, tmp_path, capsys):
    run = shutil.copytree(fake_run, tmp_path / "run")
    assert main(["eval", "--run", str(run), "--json", "--limit", "1", "--control-max-new-tokens", "8",
                 "--answer-max-new-tokens", "8", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["loss"]) == {"base", "tuned"} and data["saved_to"] == str(run / "eval.json")
    from core.commands.eval import print_table

    print_table(data)
    table = capsys.readouterr().out
    assert "Held-out loss" in table and "Perplexity" in table and "saved:" in table
    assert main(["eval", "--run", str(run), "--serving"]) == 0
    out = capsys.readouterr().out
    assert "--enable-lora" in out and "extra_body" in out
