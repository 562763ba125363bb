"""Run configs, presets and their errors: every bad setting is reported with its field (and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import ConfigError
from tests.conftest import ROOT
from tests.train.conftest import run_config

PRESETS = ROOT / "presets" / "train"


def cli(argv, capsys):
    from core.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------- presets
def test_every_model_size_has_a_preset():
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    assert {"demo", "qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"} <= names


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_preset_is_valid_and_its_paths_exist(path):
    import yaml

    from core.config import RunConfig
    from core.data.sources import sample_path
    from core.hardware.catalog import load_catalog
    from core.presets import load_preset
    from core.settings import from_dict, read_yaml

    values = load_preset(path)  # every setting checked, errors name file:line and field
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and text.count("#") >= 5, "presets explain their trade-offs in comments"
    model = values["model.name_or_path"]
    assert model == "demo" or model in load_catalog(), f"{path.name}: unknown model {model!r}"
    raw, lines = read_yaml(path)
    if raw.get("data"):  # a preset with data must run as it is: its sources must exist
        cfg = from_dict(RunConfig, raw, source=str(path), lines=lines)
        for src in cfg.data.mix.sources if cfg.data.mix else []:
            assert sample_path(src.path) or Path(src.path).exists(), f"{path.name}: missing source {src.path}"
        if cfg.data.mix_dir:
            assert Path(cfg.data.mix_dir).is_dir()
    assert yaml.safe_load(text)["model"]["name_or_path"] == model


def test_preset_sizes_follow_the_memory_trade_off():
    from core.presets import load_preset

    big = load_preset(PRESETS / "qwen3-32b.yaml")
    small = load_preset(PRESETS / "qwen3-0.6b.yaml")
    assert big["model.method"] == "qlora" and big["train.micro_batch"] == "auto"
    assert small["model.method"] == "lora"
    assert load_preset(PRESETS / "demo.yaml")["model.name_or_path"] == "demo"


# ------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("body, field, line", [
    ("model: {name_or_path: demo}\ntrain:\n  micro_batch: 0\ndata: {mix_dir: x}\n", "train.micro_batch", 3),
    ("lora:\n  rank: 8\ndata: {mix_dir: x}\n", "lora.rank", 2),
    ("lora:\n  target_modules: [q_proj, qkv]\ndata: {mix_dir: x}\n", "lora.target_modules", 2),
    ("model:\n  method: fp8\ndata: {mix_dir: x}\n", "model.method", 2),
    ("train:\n  learning_rate: fast\ndata: {mix_dir: x}\n", "train.learning_rate", 2),
    ("model: {name_or_path: demo}\n", "data.mix_dir", None),
])
def test_bad_config_names_the_field_and_line(tmp_path, capsys, body, field, line):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    rc, _out, err = cli(["train", str(cfg), "--dry-run"], capsys)
    assert rc == 2
    assert field in err, err
    if line:
        assert f"bad.yaml:{line}" in err, err


def test_bad_cli_override_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("data: {mix_dir: x}\n")
    rc, _out, err = cli(["train", str(cfg), "--dry-run", "--train.micro-batch", "-3"], capsys)
    assert rc == 2 and "train.micro_batch" in err


def test_dry_run_prints_the_resolved_config_with_overrides(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "ok.yaml"
    cfg.write_text("model: {name_or_path: demo}\nlora: {r: 16}\ndata: {mix_dir: some/mix}\n")
    rc, out, _err = cli(["train", str(cfg), "--dry-run", "--lora.r", "8", "--name", "x1",
                         "--runs-dir", str(tmp_path / "runs")], capsys)
    assert rc == 0
    data = yaml.safe_load(out)
    assert data["lora"]["r"] == 8 and data["name"] == "x1"
    assert data["runs_dir"] == str((tmp_path / "runs").resolve())
    assert data["train"]["packing"] == "auto"


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys, facts_mix):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "status.json").write_text(json.dumps({"state": "done"}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{mix_dir: {facts_mix}}}\nruns_dir: {tmp_path / 'runs'}\n")
    rc, _out, err = cli(["train", str(cfg), "--name", "taken"], capsys)
    assert rc == 2 and "already exists" in err and "name" in err


# ------------------------------------------------------------------- errors found at run time
def _run_in_process(cfg, monkeypatch):
    from core.train import runs, worker

    monkeypatch.setenv("QWENTUNE_LOG_REDIRECTED", "1")  # no tee of pytest's own output
    rc = worker.run(cfg)
    return rc, runs.read_status(Path(cfg.runs_dir) / cfg.name)


@pytest.mark.parametrize("change, field", [
    ({"model": "/nonexistent/model-folder"}, "model.name_or_path"),
    ({"mix": "/nonexistent/mix"}, "data.mix_dir"),
    ({"max_seq_len": 16}, "data.mix_dir"),  # every row is longer: nothing left to train
    ({"backend": "unsloth"}, "model.backend"),  # no CUDA here
    ({"optimizer": "adamw_8bit"}, "train.optimizer"),
])
def test_runtime_config_errors_fail_the_run_naming_the_field(tmp_path, monkeypatch, demo_model_path, facts_mix,
                                                               change, field):
    import torch

    if field == "model.backend" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    train = {k: v for k, v in change.items() if k in ("max_seq_len", "optimizer")}
    cfg = run_config(change.get("model", demo_model_path), Path(change.get("mix", facts_mix)), tmp_path / "runs",
                     name="bad", **train)
    if "backend" in change:
        cfg.model.backend = change["backend"]
    rc, status = _run_in_process(cfg, monkeypatch)
    assert rc == 2
    assert status["state"] == "failed" and field in status["error"], status
    assert status["resumable"] is False and status["advice"]


def test_missing_tracking_package_is_named(tmp_path, monkeypatch, demo_model_path, facts_mix):
    import importlib.util

    if importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed")
    cfg = run_config(demo_model_path, facts_mix, tmp_path / "runs", name="wb", report_to="wandb")
    rc, status = _run_in_process(cfg, monkeypatch)
    assert rc == 2 and "train.report_to" in status["error"] and "pip install wandb" in status["error"]


# -------------------------------------------------------------------------- out of memory
def test_out_of_memory_fails_with_advice_and_an_estimate(tmp_path, monkeypatch, demo_model_path, facts_mix):
    import torch

    from core.train import backends

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backends, "load", oom)
    cfg = run_config(demo_model_path, facts_mix, tmp_path / "runs", name="oom", micro_batch=4, grad_accum=2)
    rc, status = _run_in_process(cfg, monkeypatch)
    assert rc == 3
    assert status["state"] == "failed" and status["oom"] is True and status["resumable"] is True
    advice = status["advice"]
    assert "train.micro_batch = 2" in advice and "train.grad_accum = 4" in advice
    assert "model.method = qlora" in advice
    assert "GiB" in advice  # the estimator's figure (or why there is none)


def test_oom_advice_without_smaller_batch_suggests_shorter_rows():
    from core.train.worker import oom_advice

    cfg = run_config("demo", Path("x"), Path("r"), micro_batch=1, max_seq_len=4096)
    cfg.model.method = "qlora"
    text = oom_advice(cfg, None, "unsloth")
    assert "train.max_seq_len = 2048" in text and "micro_batch" not in text.split("Try")[1].split(".")[0]


def test_oom_advice_estimates_the_stage_and_the_cards(demo_model_path):
    """The figure in the advice is the run's own: a DPO row is a chosen + rejected pair (more memory
    than SFT at the same settings), and a ddp / fsdp run's figure is per GPU."""
    import re

    from core.train.worker import oom_advice

    def figure(text):
        return float(re.search(r"Estimated peak[^:]*: ([\d.]+) GiB now", text).group(1))

    sft = run_config(demo_model_path, Path("x"), Path("r"), micro_batch=4, max_seq_len=2048)
    dpo = run_config(demo_model_path, Path("x"), Path("r"), micro_batch=4, max_seq_len=2048, stage="dpo")
    assert figure(oom_advice(dpo, demo_model_path, "peft")) > figure(oom_advice(sft, demo_model_path, "peft"))
    ddp = run_config(demo_model_path, Path("x"), Path("r"), micro_batch=4, max_seq_len=2048, strategy="ddp",
                     gpus="2")
    assert "Estimated peak per GPU:" in oom_advice(ddp, demo_model_path, "peft")


# ------------------------------------------------------------------------------- batching
def test_auto_batching_pads_full_rows_and_buckets_short_ones():
    from core.train.data import choose_packing

    assert choose_packing("auto", [2040, 2046, 2048, 2044], 2, 2048)[0] == "off"
    mode, why = choose_packing("auto", [120, 300, 1800, 90, 2000, 150], 2, 2048)
    assert mode == "bucket" and "fill" in why
    assert choose_packing("padding_free", [100], 2, 2048) == ("padding_free", "train.packing = padding_free")


def test_worker_signal_handlers_are_restored(tmp_path, monkeypatch, facts_mix):
    import signal

    before = signal.getsignal(signal.SIGINT)
    cfg = run_config("/nonexistent", facts_mix, tmp_path / "runs", name="sig")
    _run_in_process(cfg, monkeypatch)
    assert signal.getsignal(signal.SIGINT) is before


def test_config_error_type_is_config_error():
    with pytest.raises(ConfigError):
        run_config("demo", Path("x"), Path("r"), micro_batch=0)
