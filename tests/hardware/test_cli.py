"""`python -m core hw` and `python -m core estimate` on a machine without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from core.cli import main
from tests.conftest import ROOT


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_hw_simulated_json_shape(capsys):
    out = run_json(capsys, ["hw", "--vram-gb", "24", "--json"])
    assert set(out) >= {"gpus", "recommendations", "best"}
    assert out["gpus"][0]["total_gib"] == 24.0
    for r in out["recommendations"]:
        assert isinstance(r["model"], str) and r["method"] in ("lora", "qlora")
        assert isinstance(r["est_gib"], float) and r["verdict"] in ("fits", "tight", "no")
        assert isinstance(r["max_seq_len"], int)
    assert out["best"]["verdict"] == "fits"


def test_hw_seq_len_and_gpus(capsys):
    short = run_json(capsys, ["hw", "--vram-gb", "16", "--seq-len", "1024", "--json"])
    long = run_json(capsys, ["hw", "--vram-gb", "16", "--seq-len", "8192", "--json"])
    assert short["recommendations"][0]["seq_len"] == 1024
    assert sum(r["est_gib"] for r in long["recommendations"]) > sum(r["est_gib"] for r in short["recommendations"])
    two = run_json(capsys, ["hw", "--vram-gb", "16", "--gpus", "2", "--json"])
    assert {r["gpu"] for r in two["recommendations"]} == {0, 1}


def test_hw_text_marks_the_best_pick(capsys):
    assert main(["hw", "--vram-gb", "24"]) == 0
    text = capsys.readouterr().out
    assert "<- best pick" in text and "Best pick:" in text


def test_hw_bad_vram(capsys):
    assert main(["hw", "--vram-gb", "-3"]) == 2
    assert "--vram-gb" in capsys.readouterr().err


def test_estimate_json_shape(capsys):
    out = run_json(capsys, ["estimate", "--model", "qwen3-8b", "--method", "qlora", "--seq-len", "2048",
                            "--batch", "2", "--rank", "16", "--json"])
    assert isinstance(out["total_gib"], float)
    assert set(out["breakdown"]) == {"weights", "lora", "activations", "logits", "overhead"}
    assert abs(sum(out["breakdown"].values()) - out["total_gib"]) < 0.01


def test_estimate_inference_and_targets(capsys):
    out = run_json(capsys, ["estimate", "--model", "qwen3-4b", "--method", "lora", "--seq-len", "8192",
                            "--inference", "--json"])
    assert "kv_cache" in out["breakdown"]
    few = run_json(capsys, ["estimate", "--model", "qwen3-4b", "--targets", "q_proj,v_proj", "--json"])
    assert few["setup"]["target_modules"] == ["q_proj", "v_proj"]


def test_estimate_unknown_model_is_a_clear_error(capsys):
    assert main(["estimate", "--model", "qwen3-9b"]) == 2
    assert "unknown model 'qwen3-9b'" in capsys.readouterr().err


def test_real_subprocess_without_gpu():
    for argv in (["hw", "--vram-gb", "24", "--json"], ["hw", "--json"],
                 ["estimate", "--model", "qwen3-8b", "--method", "qlora", "--seq-len", "2048", "--batch", "2",
                  "--rank", "16", "--json"]):
        proc = subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        json.loads(proc.stdout)


def test_hw_plans_several_cards_you_do_not_have(capsys):
    out = run_json(capsys, ["hw", "--gpus", "2", "--gpu-memory", "48", "--seq-len", "1024", "--json"])
    assert out["multi"]["gpus"] == 2 and out["multi"]["vram_gib"] == 48.0
    rows = {(r["model"], r["method"]): r for r in out["multi"]["recommendations"]}
    assert rows[("qwen3-32b", "lora")]["strategy"] == "fsdp" and rows[("qwen3-32b", "lora")]["verdict"] == "fits"
    assert main(["hw", "--gpus", "2", "--vram-gb", "48", "--seq-len", "1024"]) == 0
    text = capsys.readouterr().out
    assert "2 GPUs together" in text and "With 2 GPUs:" in text and "train.strategy:" in text
    assert "Qwen3-32B" in text and "fsdp" in text
    assert run_json(capsys, ["hw", "--vram-gb", "24", "--json"])["multi"] is None


def test_hw_gpus_beyond_the_detected_ones_says_how_to_plan(capsys, monkeypatch):
    from core.hardware import detect

    monkeypatch.setattr(detect, "detect", lambda *a, **k: detect.simulated(24, count=1))
    assert main(["hw", "--gpus", "2"]) == 2
    assert "--gpu-memory" in capsys.readouterr().err


def test_estimate_stage_and_strategy_flags(capsys):
    grpo = run_json(capsys, ["estimate", "--model", "qwen3-8b", "--method", "qlora", "--stage", "grpo", "--batch",
                             "4", "--completion-len", "2048", "--kl-beta", "0.04", "--json"])
    assert grpo["setup"]["stage"] == "grpo" and grpo["setup"]["completion_len"] == 2048
    assert grpo["setup"]["generation_batch"] == 16 and set(grpo["phases"]) == {"step", "generation", "reference"}
    assert {"reference", "generation"} <= set(grpo["breakdown"])
    dpo = run_json(capsys, ["estimate", "--model", "qwen3-8b", "--method", "qlora", "--stage", "dpo", "--json"])
    pre = run_json(capsys, ["estimate", "--model", "qwen3-8b", "--method", "qlora", "--stage", "dpo",
                            "--precompute-ref", "--json"])
    assert pre["total_gib"] < dpo["total_gib"]
    fsdp = run_json(capsys, ["estimate", "--model", "qwen3-32b", "--method", "lora", "--strategy", "fsdp",
                             "--gpus", "4", "--json"])
    one = run_json(capsys, ["estimate", "--model", "qwen3-32b", "--method", "lora", "--json"])
    assert fsdp["setup"]["gpus"] == 4 and fsdp["total_gib"] < one["total_gib"]
    assert main(["estimate", "--model", "qwen3-8b", "--stage", "grpo", "--completion-len", "0"]) == 2
    assert "rl.max_completion_len" in capsys.readouterr().err


def test_hw_judges_a_stage(capsys):
    out = run_json(capsys, ["hw", "--vram-gb", "24", "--stage", "grpo", "--completion-len", "2048", "--json"])
    assert out["stage"] == "grpo" and out["rl"]["max_completion_len"] == 2048
    assert {r["seq_len"] for r in out["recommendations"]} == {512 + 2048}
    sft = run_json(capsys, ["hw", "--vram-gb", "24", "--json"])
    assert sft["stage"] == "sft" and sft["rl"] is None
    assert main(["hw", "--vram-gb", "24", "--stage", "dpo"]) == 0
    assert "for dpo (chosen + rejected sequences of 2048 tokens)" in capsys.readouterr().out
    assert main(["hw", "--vram-gb", "24", "--stage", "grpo", "--num-generations", "1"]) == 2
    assert "--num-generations" in capsys.readouterr().err
