"""The one GPU queue: chat (or eval) next to a training run only when the estimator says both fit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from core.gpu_queue import may_start_gpu_work
from core.hardware.detect import GpuInfo, HardwareReport
from core.hardware.estimate import estimate_inference, estimate_training
from core.settings import dump_yaml
from gui.i18n import Strings


def _card(total: float, free: float, name: str = "RTX 3060") -> HardwareReport:
    return HardwareReport(gpus=[GpuInfo(index=0, name=name, total_gib=total, free_gib=free,
                                        used_gib=total - free)])


def _run(runs: Path, name: str, state: str, model: str = "qwen3-8b", pid: int | None = None, **status) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    cfg = RunConfig(name=name, model=ModelConfig(name_or_path=model, method="qlora"),
                    train=TrainConfig(max_seq_len=2048, micro_batch=2), data=DataConfig(mix_dir="mixes/x"))
    dump_yaml(cfg, run / "config.yaml")
    (run / "status.json").write_text(json.dumps({"state": state, "pid": pid if pid is not None else os.getpid(),
                                                 "model": model, "method": "qlora", **status}))
    return run


def _train_gib(model="qwen3-8b"):
    return estimate_training(model, method="qlora", seq_len=2048, micro_batch=2, rank=32).total_gib


def test_demo_mode_and_cpu_only_machines_always_allow(tmp_path):
    _run(tmp_path, "busy", "running")
    assert may_start_gpu_work("chat", runs_dir=tmp_path, demo=True).code == "cpu"
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=HardwareReport(), model="qwen3-8b")
    assert d.allowed and d.code == "cpu"


def test_idle_gpu_allows_and_warns_when_the_model_cannot_fit(tmp_path):
    _run(tmp_path, "old", "done")
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(24, 23), model="qwen3-8b", method="qlora")
    assert d.allowed and d.code == "idle" and d.run is None
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(12, 3), model="qwen3-8b", method="lora")
    assert d.allowed and d.code == "too_big" and "only 3.0 GiB free" in d.message()


def test_training_on_a_small_card_blocks_chat_and_says_why(tmp_path):
    _run(tmp_path, "big-run", "running")
    need = estimate_inference("qwen3-8b", method="qlora", context_len=4096, adapter_rank=32).total_gib
    assert need + _train_gib() > 12 * 0.95  # the premise: both do not fit on a 12 GB card
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(12, 2.5), model="qwen3-8b",
                           method="qlora", adapter_rank=32)
    assert not d.allowed and d.code == "busy" and d.run == "big-run"
    assert d.values["train_gib"] == f"{_train_gib():.1f}" and d.values["need_gib"] == f"{need:.1f}"
    assert "big-run" in d.message() and "RTX 3060" in d.message()
    zh = Strings("zh")(d.key, **d.values)
    assert "正在等待 GPU" in zh and "big-run" in zh


def test_both_fit_on_a_big_card(tmp_path):
    _run(tmp_path, "small-run", "running", model="qwen3-0.6b")
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(80, 70, "H100"), model="qwen3-8b",
                           method="qlora")
    assert d.allowed and d.code == "fits" and d.run == "small-run"
    # ...but not when the memory is not free right now, whatever the estimate says.
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(80, 1, "H100"), model="qwen3-8b",
                           method="qlora")
    assert not d.allowed and d.code == "busy"


def test_a_measured_peak_above_the_estimate_counts(tmp_path):
    _run(tmp_path, "r", "running", model="qwen3-0.6b", peak_alloc_gib=70.0)
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(80, 70, "H100"), need_gib=9.0)
    assert not d.allowed and d.values["train_gib"] == "70.0"


def test_queued_and_stopping_runs_hold_the_gpu_but_dead_ones_do_not(tmp_path):
    _run(tmp_path, "q", "queued", queued="2999-01-01T00:00:00+00:00", pid=0)
    d = may_start_gpu_work("eval", runs_dir=tmp_path, hardware=_card(12, 11), need_gib=11.5)
    assert not d.allowed and d.run == "q"
    dead = tmp_path / "dead"
    _run(tmp_path, "dead", "running", pid=2**22 + 12345)  # no such process: read_status marks it failed
    d = may_start_gpu_work("eval", runs_dir=tmp_path, hardware=_card(12, 11), need_gib=11.5, exclude_run="q")
    assert d.allowed and d.code == "too_big" and dead.exists()


def test_unknown_sizes_refuse_with_the_reason(tmp_path):
    _run(tmp_path, "hub-run", "running", model="someone/unknown-model")
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=_card(24, 20), need_gib=4.0)
    assert not d.allowed and d.code == "busy_unknown" and "someone/unknown-model" in d.values["detail"]
    Strings("en")(d.key, **d.values)  # every code has a string with matching placeholders


def test_unknown_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        may_start_gpu_work("dance", runs_dir=tmp_path, demo=True)


def test_every_reason_has_gui_strings_with_the_same_placeholders():
    import re

    from core.gpu_queue import _EN
    from gui.i18n import all_strings

    for code, english in _EN.items():
        entry = all_strings()[f"gpu_queue.{code}"]
        want = sorted(set(re.findall(r"{(\w+)}", english)))
        for lang, text in entry.items():
            assert sorted(set(re.findall(r"{(\w+)}", text))) == want, (code, lang)


def test_gui_gate_answers_in_the_pages_language(tmp_path):
    from gui.app import AppContext
    from gui.gpu_gate import gpu_gate

    _run(tmp_path, "big-run", "running")
    ctx = AppContext(runs_dir=tmp_path, demo=False, lang="zh")
    ok, note = gpu_gate(ctx, "chat", model="qwen3-8b", method="qlora", hardware=_card(12, 2.5))
    assert not ok and note.startswith("正在等待 GPU") and "big-run" in note
    ok, note = gpu_gate(AppContext(runs_dir=tmp_path, demo=True), "chat", model="qwen3-8b")
    assert ok and note == ""


def test_memory_the_work_already_holds_is_not_asked_for_again(tmp_path):
    _run(tmp_path, "small-run", "running", model="qwen3-0.6b")
    # A loaded 8B chat model (about 6 GiB resident) on an 80 GB card with 4 GiB free: the next
    # generation needs only its KV cache on top, so it may go on.
    card = _card(80, 4, "H100")
    assert not may_start_gpu_work("chat", runs_dir=tmp_path, hardware=card, need_gib=9.0).allowed
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=card, need_gib=9.0, resident_gib=6.0)
    assert d.allowed and d.code == "fits"
