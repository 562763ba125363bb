"""Real training on the CPU: the run learns, the run folder is complete, stop / stop now / kill -9 /
resume behave, the adapter exports. Each run goes through `python -m core train`, as the GUI's do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import dump_yaml
from core.train import runs
from tests.conftest import ROOT
from tests.train.conftest import run_config

pytestmark = pytest.mark.slow

METRIC_KEYS = {"step", "total_steps", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s",
               "gpu_mem_gib", "gpu_util", "elapsed_s", "eta_s"}


def train_cli(cfg_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "core", "train", str(cfg_path), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, learnable_model, facts_mix) -> Path:
    """One real run through the CLI: 30 steps on 4 facts, eval every 10, checkpoints every 10."""
    root = tmp_path_factory.mktemp("train")
    cfg = run_config(learnable_model, facts_mix, root / "runs", name="learn")
    dump_yaml(cfg, root / "learn.yaml")
    proc = train_cli(root / "learn.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "runs" / "learn"


def test_run_learns_the_memorisation_set(trained):
    metrics = runs.read_metrics(trained)
    losses = [m["loss"] for m in metrics if m["loss"] is not None]
    assert len(losses) == 30
    assert losses[-1] <= losses[0] / 2, losses
    evals = [m["eval_loss"] for m in metrics if m["eval_loss"] is not None]
    assert len(evals) >= 3 and evals[-1] < evals[0]


def test_run_folder_is_complete(trained):
    from core.config import load_run_config

    st = runs.read_status(trained)
    assert st["state"] == "done" and st["step"] == st["total_steps"] == 30
    assert st["backend"] == "peft" and st["pid"] and st["started"] and st["finished"]
    assert st["loss"] is not None and st["eval_loss"] is not None and st["error"] is None
    assert st["data"]["rows"] == 4 and st["eval_data"]["rows"] == 2
    cfg = load_run_config(trained / "config.yaml")  # the resolved config reads back
    assert cfg.name == "learn" and Path(cfg.runs_dir) == trained.parent
    for m in runs.read_metrics(trained):
        assert set(m) >= METRIC_KEYS, set(m) ^ METRIC_KEYS
    train_rows = [m for m in runs.read_metrics(trained) if m["loss"] is not None]
    assert [m["step"] for m in train_rows] == list(range(1, 31))
    assert train_rows[-1]["eta_s"] == 0 and train_rows[5]["tokens_per_s"] > 0
    log = (trained / "train.log").read_text()
    assert "backend: transformers + PEFT" in log and "done: step 30/30" in log
    # the demo model is float32 on the CPU: nothing to autocast, and the log says so
    assert st["autocast"] is False and "autocast: off (the model is in float32)" in log
    # Each note keeps its English text (log, CLI) and has its code beside it (the GUI translates it).
    assert st["notices"][0] == "backend: transformers + PEFT (no CUDA GPU)"
    assert st["notice_codes"][0] == {"code": "backend_peft_no_cuda", "params": {}}
    assert len(st["notice_codes"]) == len(st["notices"]) and st["packing_code"]["code"].startswith("packing_")
    assert {p.name for p in (trained / "checkpoints").glob("checkpoint-*")} == {"checkpoint-20", "checkpoint-30"}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (trained / "adapter").iterdir()}


def test_the_mask_from_render_reaches_the_trainer(trained):
    """train.log's first-batch line counts the labels TRL built: they equal render()'s mask."""
    import re

    st = runs.read_status(trained)
    line = next(x for x in (trained / "train.log").read_text().splitlines() if "first batch:" in x)
    tokens, trained_tokens = map(int, re.search(r"(\d+) tokens, (\d+) trained", line).groups())
    # bucket (auto) puts the 4 short rows side by side in one batch, so the first batch is the whole set
    assert tokens == st["data"]["tokens"] and trained_tokens == st["data"]["trained_tokens"]
    assert 0 < trained_tokens < tokens  # assistant-only: prompts are not trained


def test_adapter_trained_while_the_base_stayed(trained, learnable_model):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero: it trained
    base = AutoModelForCausalLM.from_pretrained(learnable_model)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(trained / "adapter"))
    for name, value in tuned.get_base_model().state_dict().items():
        key = name.replace("base_layer.", "")
        if "lora_" in name or key not in original:
            continue
        assert torch.equal(value, original[key]), name
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        with tuned.disable_adapter():
            before = tuned(ids).logits
        after = tuned(ids).logits
    assert not torch.allclose(before, after)


def test_export_lora_and_merged16(trained, tmp_path, learnable_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.train.export import ExportConfig, ExportError, export_run

    lora = export_run(ExportConfig(run=str(trained), format="lora", out=str(tmp_path / "lora")), echo=lambda m: None)
    assert (lora / "adapter_config.json").exists() and (lora / "tokenizer_config.json").exists()
    merged = export_run(ExportConfig(run=str(trained), format="merged16", out=str(tmp_path / "m16")),
                        echo=lambda m: None)
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(learnable_model), str(lora))(ids).logits
    assert torch.allclose(plain, peft, atol=1e-4)
    with pytest.raises(Exception) as err:  # a second export into the same folder is refused
        export_run(ExportConfig(run=str(trained), format="lora", out=str(tmp_path / "lora")))
    assert "already exists" in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="CUDA"):
            export_run(ExportConfig(run=str(trained), format="merged4", out=str(tmp_path / "m4")))
    from core.train.export import find_llama_cpp

    if not find_llama_cpp()["converter"]:
        with pytest.raises(ExportError, match="llama.cpp"):
            export_run(ExportConfig(run=str(trained), format="gguf", out=str(tmp_path / "gguf")))


def test_export_cli(trained, tmp_path, capsys):
    from core.cli import main

    rc = main(["export", "--run", str(trained), "--format", "lora", "--out", str(tmp_path / "x"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and Path(out["out"]).joinpath("adapter_model.safetensors").exists()


# ------------------------------------------------------------------------- stop and resume
def wait_until(run_dir: Path, cond, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    st = {}
    while time.time() < deadline:
        st = runs.read_status(run_dir)
        if cond(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"timed out; last status {st}\n{runs.read_log_tail(run_dir)}")


def starts(run_dir: Path) -> list[int]:
    """The step each training session of the run started at, from train.log."""
    import re

    return [int(m) for m in re.findall(r"training: \d+ steps \(starting at step (\d+)\)",
                                       (run_dir / "train.log").read_text())]


@pytest.fixture
def live_runs():
    """Run folders a test started; any worker still alive at the end is killed (by its pid)."""
    started: list[Path] = []
    yield started
    for run_dir in started:
        pid = runs.read_status(run_dir).get("pid")
        if pid and runs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_kill9_and_resume(tmp_path, learnable_model, facts_mix, monkeypatch, live_runs):
    monkeypatch.setenv("QWENTUNE_STEP_DELAY_S", "0.15")  # steps slow enough to act between them
    cfg = run_config(learnable_model, facts_mix, tmp_path / "runs", name="ctl", max_steps=30, save_steps=3,
                     eval_steps=0, learning_rate=1e-3)
    run_dir = runs.start_run(cfg, tmp_path / "runs")
    live_runs.append(run_dir)

    # Stop: ends after the current step, saves a checkpoint there and the adapter.
    wait_until(run_dir, lambda s: s["state"] == "running" and s.get("step", 0) >= 4)
    runs.request_stop(run_dir)
    st = wait_until(run_dir, lambda s: s["state"] in ("stopped", "done", "failed"))
    assert st["state"] == "stopped", st
    stop_step = st["step"]
    assert 4 <= stop_step < 30
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert runs.latest_checkpoint(run_dir).name == f"checkpoint-{stop_step}"

    # Resume continues the step count (Stop now is core.train.runs.kill_run: tests/train/test_runs.py).
    # kill -9 behind our back: the run reads as failed and resumable.
    ckpt_step = int(runs.latest_checkpoint(run_dir).name.split("-")[1])
    runs.resume_run(run_dir)
    wait_until(run_dir, lambda s: s["state"] == "running" and s.get("step", 0) >= ckpt_step + 4)
    assert starts(run_dir) == [0, stop_step]
    pid = runs.read_status(run_dir)["pid"]
    os.kill(pid, signal.SIGKILL)
    st = wait_until(run_dir, lambda s: s["state"] != "running", timeout=20)
    assert st["state"] == "failed" and st["resumable"] and st["lost"]
    assert starts(run_dir)[-1] == ckpt_step

    # And it resumes to the end, with the same total step count.
    last_step = int(runs.latest_checkpoint(run_dir).name.split("-")[1])
    runs.resume_run(run_dir)
    st = wait_until(run_dir, lambda s: s["state"] in ("done", "failed"), timeout=240)
    assert st["state"] == "done" and st["step"] == st["total_steps"] == 30, st
    assert starts(run_dir)[-1] == last_step


def test_inline_mix_preset_runs(tmp_path):
    """The demo preset as shipped (an inline mix of the sample data), cut to 2 steps."""
    proc = train_cli(ROOT / "presets" / "train" / "demo.yaml", "--runs-dir", str(tmp_path), "--name", "demo",
                     "--train.max-steps", "2", "--train.eval-steps", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "demo"
    assert (run_dir / "mix" / "manifest.json").exists()
    st = runs.read_status(run_dir)
    assert st["state"] == "done" and st["mix_dir"] == str(run_dir / "mix")
