"""Settings checked against each other, the data and the card before a run starts: every problem
collected and named by its setting, in the CLI, in the Train tab, in both languages."""

from __future__ import annotations

import json

import pytest

from core.config import RunConfig
from core.settings import write_json_atomic
from core.train.validate import Card, SettingsProblems, check_run, errors, model_context, total_steps, warnings


def cfg_with(tmp_path, rows=100, **train) -> RunConfig:
    mix = tmp_path / "mix"
    mix.mkdir(exist_ok=True)
    write_json_atomic(mix / "manifest.json", {"train_rows": rows, "eval_rows": 0, "max_seq_len": 2048})
    cfg = RunConfig()
    cfg.model.name_or_path = "qwen3-8b"
    cfg.model.method = "qlora"
    cfg.data.mix_dir = str(mix)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_good_settings_have_no_problem(tmp_path):
    assert check_run(cfg_with(tmp_path)) == []


def test_every_problem_is_collected_at_once_and_names_its_setting(tmp_path):
    cfg = cfg_with(tmp_path, rows=100, epochs=0.0, max_steps=0, learning_rate=0.0, max_seq_len=40960,
                   grad_accum=100000)
    problems = check_run(cfg)
    assert {p.setting for p in problems} == {"train.learning_rate", "train.epochs", "train.max_seq_len",
                                              "train.grad_accum"}
    assert all(p.level == "error" for p in problems)
    context = next(p for p in problems if p.setting == "train.max_seq_len")
    assert "40960" in context.message and "32768" in context.message
    with pytest.raises(SettingsProblems) as info:
        from core.train.validate import raise_for_errors

        raise_for_errors(problems)
    text = str(info.value)
    assert "4 setting(s)" in text and all(p.setting in text for p in problems)


def test_warmup_against_the_steps_the_run_will_take(tmp_path):
    # 100 rows, 2 x 4 per step: 13 steps per epoch, 1 epoch.
    cfg = cfg_with(tmp_path, rows=100, warmup_steps=13)
    assert total_steps(cfg, 100) == 13
    (problem,) = check_run(cfg)
    assert problem.setting == "train.warmup_steps" and problem.params["steps"] == 13
    assert problem.level == "warning"  # it trains: the rate just never reaches its peak
    assert check_run(cfg_with(tmp_path, rows=100, warmup_steps=12)) == []
    cfg = cfg_with(tmp_path, max_steps=10, warmup_steps=10)  # max_steps decides the length
    assert [p.setting for p in check_run(cfg)] == ["train.warmup_steps"]


def test_one_step_needing_more_rows_than_the_mix_has(tmp_path):
    cfg = cfg_with(tmp_path, rows=20, micro_batch=4, grad_accum=8, warmup_steps=0)
    (problem,) = check_run(cfg)
    assert problem.code == "step_bigger_than_data" and problem.params == {"rows_per_step": 32, "rows": 20}
    assert problem.level == "warning"


def test_micro_batch_over_the_card_is_a_warning_with_the_estimate(tmp_path):
    cfg = cfg_with(tmp_path, rows=10000, micro_batch=64)
    cfg.model.method = "lora"
    (problem,) = check_run(cfg, card=Card("NVIDIA GeForce RTX 3060", 12.0))
    assert problem.level == "warning" and problem.setting == "train.micro_batch"
    assert "GiB" in problem.message and "RTX 3060" in problem.message
    assert errors([problem]) == [] and warnings([problem]) == [problem]
    big = check_run(cfg_with(tmp_path, micro_batch=2), card=Card("NVIDIA H200", 140.0))
    assert big == []


def test_model_context_from_a_folder_and_the_catalog(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    assert model_context(str(tmp_path / "m")) == 4096
    assert model_context("qwen3-8b") == 32768
    assert model_context("Qwen/Qwen3-8B") == 32768
    assert model_context("demo") is None and model_context("someone/unknown-model") is None


def test_cli_train_lists_every_error_and_marks_a_prepared_run_failed(tmp_path, capsys):
    from core.cli import main
    from core.settings import dump_yaml

    cfg = cfg_with(tmp_path, epochs=0.0, max_steps=0, learning_rate=0.0)
    cfg.model.name_or_path = "demo"
    cfg.runs_dir = str(tmp_path / "runs")
    cfg.name = "bad"
    path = tmp_path / "bad.yaml"
    dump_yaml(cfg, path)
    run = tmp_path / "runs" / "bad"
    run.mkdir(parents=True)
    write_json_atomic(run / "status.json", {"state": "queued"})  # as the GUI leaves it before the worker
    rc = main(["train", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert rc != 0 and "train.learning_rate" in err and "train.epochs" in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "train.epochs" in status["error"]


def test_train_tab_shows_every_problem_before_starting(tmp_path, monkeypatch):
    import gradio as gr

    from core.train import runs
    from gui.app import AppContext
    from gui.tabs import train

    started = []
    monkeypatch.setattr(runs, "_spawn", lambda cmd, run_dir: started.append(run_dir))
    cfg = cfg_with(tmp_path)
    for lang, words in (("en", "must change before the run can start"), ("zh", "启动训练前需要修改")):
        ctx = AppContext(runs_dir=tmp_path / "runs", demo=True, lang=lang, mixes_dir=tmp_path)
        with gr.Blocks():
            train.build(ctx)
        values = {p: w.value for p, w in ctx.shared[train.TRAIN_FIELDS].items()}
        values.update({"data.mix_dir": cfg.data.mix_dir, "model.name_or_path": "demo", "train.epochs": 0,
                       "train.max_steps": 0, "train.learning_rate": 0, "train.warmup_steps": 5})
        message, run_update = train.on_start(ctx, *[values[p] for p in train.field_paths(ctx)])
        assert words in message and "`train.epochs`" in message and "`train.learning_rate`" in message
        assert message.count("\n- ") == 2 and started == []
        assert ctx.t.setting_label("train", "train.learning_rate") in message


def test_micro_batch_auto_counts_two_rows_per_accumulation_step_and_skips_the_memory_check(tmp_path):
    cfg = cfg_with(tmp_path, rows=100, warmup_steps=20)
    cfg.train.micro_batch = "auto"  # the trainer picks the micro-batch; the effective batch stays 2 x 4
    assert total_steps(cfg, 100) == 13
    problems = check_run(cfg, card=Card("NVIDIA GeForce RTX 3060", 12.0))
    assert [p.setting for p in problems] == ["train.warmup_steps"]


def test_the_memory_check_uses_the_smallest_card_the_run_takes(monkeypatch):
    """A ddp / fsdp run must fit on every card it takes; a single run on the card its train.gpus names."""
    from core.config import RunConfig
    from core.hardware import detect as hw
    from core.settings import from_dict
    from core.train.validate import detected_card

    def three_cards(disk_path="."):
        return hw.HardwareReport(gpus=[
            hw.GpuInfo(index=0, name="big", total_gib=80.0, free_gib=80.0, used_gib=0.0),
            hw.GpuInfo(index=1, name="small", total_gib=24.0, free_gib=24.0, used_gib=0.0),
            hw.GpuInfo(index=2, name="mid", total_gib=48.0, free_gib=48.0, used_gib=0.0)])

    monkeypatch.setattr(hw, "detect", three_cards)

    def card(**train):
        return detected_card(from_dict(RunConfig, {"train": train, "data": {"mix_dir": "x"}})).name

    assert card() == "big"  # single, gpus auto: the first card
    assert card(gpus="2,") == "mid"
    assert card(strategy="ddp", gpus="0,2") == "mid"
    assert card(strategy="fsdp", gpus="auto") == "small"
    assert card(strategy="ddp", gpus="0,7") == "big"  # a card it lacks: the launch refuses, the check uses the first
    assert detected_card().name == "big"
