"""The GPU queue in Chat, Evaluate and their CLI commands: nothing loads or generates next to a training
run unless the estimator says both fit; the user is told why, in the page's language; demo mode and
CPU work always go ahead. The GPU and the training run are mocked (this box has no GPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.config import ChatConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from core.hardware.detect import GpuInfo, HardwareReport
from core.settings import dump_yaml

SAMPLING = [True, 0.6, 0.95, 20, 0.0, 0.0, False, 8, 0]  # the chat tab's sampling widgets, in order
# the evaluate tab's settings widgets, in SETTINGS_FIELDS order
EVAL_SETTINGS = ["eval", 4, 1, 0, 16, 0, 16, "auto", True, 0, "", 10, 8, "", "both"]


def _card(total: float, free: float) -> HardwareReport:
    return HardwareReport(gpus=[GpuInfo(index=0, name="RTX 3060", total_gib=total, free_gib=free,
                                        used_gib=total - free)])


def _training(runs: Path, name: str = "big-run", model: str = "qwen3-8b") -> Path:
    """A training run that holds the GPU: state running, its pid alive (this process)."""
    run = runs / name
    run.mkdir(parents=True)
    cfg = RunConfig(name=name, model=ModelConfig(name_or_path=model, method="qlora"),
                    train=TrainConfig(max_seq_len=2048, micro_batch=2), data=DataConfig(mix_dir="mixes/x"))
    dump_yaml(cfg, run / "config.yaml")
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "model": model,
                                                 "method": "qlora"}))
    return run


@pytest.fixture
def busy(tmp_path, monkeypatch):
    """A runs folder with an active training run, on a 12 GB card with almost nothing free."""
    runs = tmp_path / "runs"
    _training(runs)
    monkeypatch.setattr("core.hardware.detect.detect", lambda *a, **k: _card(12, 0.2))
    return runs


class FakeEngine:
    def __init__(self, base_path: str, four_bit: bool = False):
        self.info = {"kind": "run", "label": "fake", "base": "demo", "base_path": base_path, "adapter": None,
                     "device": "cuda", "dtype": "bfloat16", "four_bit": four_bit, "notes": []}
        self.panes = ("base", "tuned")
        self.streams = 0

    def compare_stream(self, histories, cfg, system=""):
        self.streams += 1
        raise ValueError("stopped here by the test")


def _handlers(tab, ctx) -> dict:
    import gradio as gr

    with gr.Blocks() as page:
        tab.build(ctx)
    return {f.fn.__name__: f.fn for f in page.fns.values() if f.fn is not None}


def _ctx(runs: Path, *, demo: bool, lang: str = "zh"):
    from gui.app import AppContext

    return AppContext(runs_dir=runs, demo=demo, lang=lang)


# ------------------------------------------------------------------------------------------- core
def test_gpu_work_args_follow_what_the_loader_would_load(fake_run, demo_model_path):
    from core.chat.loader import gpu_work_args, resolve_target
    from core.gpu_queue import may_start_gpu_work

    spec = resolve_target(str(fake_run), ChatConfig())
    args = gpu_work_args(spec, ChatConfig())
    assert args["method"] == "lora" and args["adapter_rank"] == 8 and args["device"] == "auto"
    assert Path(args["model"]).is_dir()  # the estimator reads the base model's own config.json
    assert gpu_work_args(spec, ChatConfig(quant="4bit"))["method"] == "qlora"
    cpu = gpu_work_args(spec, ChatConfig(device="cpu"))
    assert cpu["device"] == "cpu"
    # Work on the CPU never waits for the GPU, whatever the card holds.
    d = may_start_gpu_work("chat", runs_dir=fake_run.parent, hardware=_card(12, 0.2), **cpu)
    assert d.allowed and d.code == "cpu"


# ---------------------------------------------------------------------------------------- chat tab
def test_chat_load_is_refused_while_training_holds_the_gpu(busy, fake_run, monkeypatch):
    from core.chat import session
    from core.chat.loader import ModelCache
    from gui.tabs import chat

    loads = []
    monkeypatch.setattr(ModelCache, "load", lambda self, *a, **k: loads.append(a))
    ctx = _ctx(busy, demo=False)
    out = list(_handlers(chat, ctx)["load"](str(fake_run), "", session.new_state()))
    status = out[-1][0]
    assert "正在等待 GPU" in status and "big-run" in status and "RTX 3060" in status
    assert loads == []  # nothing was loaded
    en = list(_handlers(chat, _ctx(busy, demo=False, lang="en"))["load"](str(fake_run), "", session.new_state()))
    assert "Waiting for the GPU" in en[-1][0] and loads == []


def test_demo_mode_always_loads(busy, fake_run, demo_model_path, monkeypatch):
    from core.chat import session
    from core.chat.loader import ModelCache
    from gui.tabs import chat

    engine = FakeEngine(str(demo_model_path))
    monkeypatch.setattr(ModelCache, "load", lambda self, *a, **k: engine)
    out = list(_handlers(chat, _ctx(busy, demo=True))["load"](str(fake_run), "", session.new_state()))
    assert "fake" in out[-1][0] and "GPU" not in out[-1][0]


def _loaded(ctx, fake_run, engine):
    """Put ``engine`` in the server's model cache as if Load had loaded ``fake_run``."""
    from core.chat.loader import ModelCache, resolve_target
    from core.chat.session import new_state

    cfg = ChatConfig(device="cpu" if ctx.demo else "auto")
    cache = ctx.server.setdefault("chat.models", ModelCache())
    cache._key, cache._engine = ModelCache.key(resolve_target(str(fake_run), cfg), cfg), engine
    return dict(new_state(), target=str(fake_run))


def test_chat_send_waits_for_the_gpu_and_demo_does_not(busy, fake_run, demo_model_path):
    from gui.tabs import chat

    engine = FakeEngine(str(demo_model_path))
    ctx = _ctx(busy, demo=False)
    state = _loaded(ctx, fake_run, engine)
    out = list(_handlers(chat, ctx)["send"]("你好", state, "", *SAMPLING))
    assert "正在等待 GPU" in out[-1][4] and engine.streams == 0  # no generation started
    demo = _ctx(busy, demo=True)
    state = _loaded(demo, fake_run, engine)
    out = list(_handlers(chat, demo)["send"]("你好", state, "", *SAMPLING))
    assert engine.streams == 1 and "stopped here by the test" in out[-1][4]


def test_chat_send_counts_the_loaded_model_once(tmp_path, fake_run, monkeypatch):
    """An 8B model already on an 80 GB card, 6 GiB free: its next reply needs only a little more."""
    import torch

    from core.hardware.estimate import estimate_inference
    from gui.tabs import chat

    runs = tmp_path / "runs"
    _training(runs, "small-run", model="qwen3-0.6b")
    need = estimate_inference("qwen3-8b", method="lora", context_len=4096).total_gib
    monkeypatch.setattr("core.hardware.detect.detect", lambda *a, **k: _card(80, 6.0))
    engine = FakeEngine("qwen3-8b")
    ctx = _ctx(runs, demo=False, lang="en")
    send = _handlers(chat, ctx)["send"]
    out = list(send("hi", _loaded(ctx, fake_run, engine), "", *SAMPLING))  # nothing resident: refused
    assert "Waiting for the GPU" in out[-1][4] and engine.streams == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: int((need - 2) * 2**30))
    out = list(send("hi", _loaded(ctx, fake_run, engine), "", *SAMPLING))
    assert engine.streams == 1


# ------------------------------------------------------------------------------------ evaluate tab
def test_evaluation_is_refused_while_training_holds_the_gpu(busy, fake_run, monkeypatch):
    from core.eval.jobs import EvalJobs
    from gui.tabs import evaluate

    started = []

    def fake_start(self, target, *a, **k):
        started.append(target)
        return SimpleNamespace(state="running", stage="load", done=0, total=1, fraction=0.0, running=True)

    monkeypatch.setattr(EvalJobs, "start", fake_start)
    text, _timer = _handlers(evaluate, _ctx(busy, demo=False))["start"](str(fake_run), *EVAL_SETTINGS)
    assert "正在等待 GPU" in text and "big-run" in text and started == []
    text, _timer = _handlers(evaluate, _ctx(busy, demo=True))["start"](str(fake_run), *EVAL_SETTINGS)
    assert started == [str(fake_run)] and "GPU" not in text


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_chat_and_eval_refuse_with_the_reason_and_force_overrides(busy, fake_run, capsys):
    from core.cli import main
    from core.gpu_queue import EXIT_GPU_BUSY

    rc = main(["chat", "--run", str(fake_run), "--prompt", "hi", "--runs-dir", str(busy), "--json"])
    err = capsys.readouterr().err
    assert rc == EXIT_GPU_BUSY and "Waiting for the GPU" in err and "big-run" in err and "--force" in err
    rc = main(["eval", "--run", str(fake_run), "--runs-dir", str(busy), "--json"])
    err = capsys.readouterr().err
    assert rc == EXIT_GPU_BUSY and "Waiting for the GPU" in err
    rc = main(["chat", "--run", str(fake_run), "--prompt", "hi", "--runs-dir", str(busy), "--json", "--force",
               "--max-new-tokens", "4", "--thinking", "off"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(out) == {"base", "tuned"}
