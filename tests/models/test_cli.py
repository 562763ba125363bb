"""`python -m core models list | get | add | remove`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from core.cli import main
from core.models.resolve import repo_dir
from tests.conftest import ROOT


def run_json(capsys, *argv) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)  # exactly one JSON document on stdout


def test_list_json_is_one_document_with_the_demo(capsys, isolated):
    code, doc = run_json(capsys, "models", "list", "--json")
    assert code == 0
    assert doc["models_dir"] == str(isolated.models)
    demo = doc["models"][0]
    assert demo["name"] == "demo" and demo["ok"] and demo["check"]["model_type"] == "qwen3"
    assert demo["status"] == "ok" and demo["size_bytes"] > 0


def test_list_table_names_problems(capsys, model_copy):
    folder = model_copy()
    (folder / "tokenizer.json").unlink()
    assert main(["models", "add", str(folder), "--force"]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "NAME" in out and "demo" in out and "PROBLEM" in out
    assert "tokenizer files are missing" in out


def test_add_checks_the_folder(capsys, model_copy, isolated):
    good = model_copy("good")
    code, doc = run_json(capsys, "models", "add", str(good), "--json")
    assert code == 0 and doc["ok"] and doc["path"] == str(good.resolve())
    bad = model_copy("bad")
    (bad / "config.json").write_text("{oops", encoding="utf-8")
    code, doc = run_json(capsys, "models", "add", str(bad), "--json")
    assert code == 1 and not doc["ok"]
    assert any("config.json is not valid JSON" in p for p in doc["problems"])
    code, doc = run_json(capsys, "models", "list", "--json")
    assert [m["path"] for m in doc["models"] if m["source"] == "added"] == [str(good.resolve())]
    assert main(["models", "remove", str(good)]) == 0
    assert main(["models", "remove", str(good)]) == 1


def test_get_downloads_and_reports_json(capsys, fake_hub):
    code, doc = run_json(capsys, "models", "get", "qwen3-0.6b", "--hub", "modelscope", "--json")
    assert code == 0 and doc["ok"] and doc["downloaded"]
    assert doc["repo_id"] == "unsloth/Qwen3-0.6B-unsloth-bnb-4bit" and doc["hub"] == "modelscope"
    assert doc["path"] == str(repo_dir("unsloth/Qwen3-0.6B-unsloth-bnb-4bit", "modelscope"))
    code, doc = run_json(capsys, "models", "get", "qwen3-0.6b", "--hub", "modelscope", "--json")
    assert code == 0 and not doc["downloaded"]


def test_get_prints_progress_lines(capsys, fake_hub, tmp_path):
    assert main(["models", "get", "qwen3-0.6b", "--quant", "none", "--cache-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "[hf] Qwen/Qwen3-0.6B" in out and "done:" in out
    assert (tmp_path / "m" / "hf" / "Qwen" / "Qwen3-0.6B" / "config.json").is_file()


def test_get_errors_are_clear(capsys, isolated):
    assert main(["models", "get", "qwen3-7b"]) == 1
    err = capsys.readouterr().err
    assert "'qwen3-7b' is not a model folder, catalog key or hub id" in err and "Did you mean qwen3-" in err
    code, doc = run_json(capsys, "models", "get", "qwen3-30b-a3b", "--quant", "dynamic4", "--json")
    assert code == 1 and "mixture-of-experts" in doc["error"] and "bnb4" in doc["advice"]


def test_get_demo_builds_nothing_new(capsys, demo_model_path):
    code, doc = run_json(capsys, "models", "get", "demo", "--json")
    assert code == 0 and not doc["downloaded"]
    assert os.path.realpath(doc["path"]) == os.path.realpath(demo_model_path)


def test_cli_as_a_subprocess(isolated):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "core", "models", "list", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["models"][0]["name"] == "demo"
    helped = subprocess.run([sys.executable, "-m", "core", "models", "get", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "--hub {hf,modelscope}" in helped.stdout and "--quant" in helped.stdout
