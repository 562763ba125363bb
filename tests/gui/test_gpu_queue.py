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


# ------------------------------------------------------------------------------- several cards
def _cards(*specs) -> HardwareReport:
    return HardwareReport(gpus=[GpuInfo(index=i, name=f"GPU{i}", total_gib=total, free_gib=free,
                                        used_gib=total - free) for i, (total, free) in enumerate(specs)])


def _multi_run(runs: Path, name: str, gpus_setting: str, strategy: str, model: str = "qwen3-8b", **status) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    cfg = RunConfig(name=name, model=ModelConfig(name_or_path=model, method="qlora"),
                    train=TrainConfig(max_seq_len=2048, micro_batch=2, gpus=gpus_setting, strategy=strategy),
                    data=DataConfig(mix_dir="mixes/x"))
    dump_yaml(cfg, run / "config.yaml")
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "model": model,
                                                 "method": "qlora", **status}))
    return run


def test_a_run_on_another_card_does_not_hold_up_chat(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _multi_run(tmp_path, "on-gpu1", "1,", "ddp", gpus=[1])  # status says it holds GPU 1 only
    hw = _cards((12, 11.5), (12, 2.0))
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=hw, need_gib=11.0)
    assert d.allowed and d.code == "idle" and d.gpus == [0]
    # the same chat on GPU 1 waits for the run
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=hw, need_gib=11.0, gpus=[1])
    assert not d.allowed and d.code == "busy" and d.run == "on-gpu1" and d.gpu_index == 1
    assert "GPU1" in d.message()


def test_every_card_a_ddp_run_holds_counts_with_its_per_card_need(tmp_path, monkeypatch):
    from core.gpu_queue import may_start_run, training_peak_gib

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    run = _multi_run(tmp_path, "ddp-run", "2", "ddp")  # queued-like: no gpus in status yet
    hw = _cards((24, 20), (24, 20), (24, 24))
    peak, _ = training_peak_gib({"path": str(run), "status": {}}, cards=2)
    assert peak == pytest.approx(_train_gib(), abs=0.01)  # ddp: one card's figure on each card
    for card in (0, 1):
        d = may_start_gpu_work("eval", runs_dir=tmp_path, hardware=hw, need_gib=24 * 0.95 - peak + 0.5,
                               gpus=[card])
        assert not d.allowed and d.gpu_index == card and d.values["train_gib"] == f"{peak:.1f}"
    assert may_start_gpu_work("eval", runs_dir=tmp_path, hardware=hw, need_gib=20.0, gpus=[2]).code == "idle"
    # a new two-card run on GPUs 1 and 2 conflicts on GPU 1 (both do not fit there)
    cfg = RunConfig(name="new", model=ModelConfig(name_or_path="qwen3-14b", method="lora"),
                    train=TrainConfig(micro_batch=1, gpus="1,2", strategy="ddp"), data=DataConfig(mix_dir="m"))
    d = may_start_run(cfg, runs_dir=tmp_path, hardware=hw)
    assert not d.allowed and d.code == "busy" and d.gpus == [1, 2] and d.gpu_index == 1 and d.run == "ddp-run"
    # on GPU 2 alone (count it as a single-card run) it only needs free memory
    cfg.train.gpus, cfg.train.strategy = "2,", "single"
    cfg.model.method = "qlora"
    assert may_start_run(cfg, runs_dir=tmp_path, hardware=_cards((24, 20), (24, 20), (24, 24))).gpus == [2]


def test_fsdp_runs_count_their_sharded_per_card_peak(tmp_path, monkeypatch):
    from core.gpu_queue import training_peak_gib
    from core.hardware.estimate import estimate_training

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    run = _multi_run(tmp_path, "fsdp-run", "0,1", "fsdp", model="qwen3-32b", gpus=[0, 1])
    peak, why = training_peak_gib({"path": str(run), "status": {"gpus": [0, 1]}})
    want = estimate_training("qwen3-32b", method="qlora", seq_len=2048, micro_batch=2, rank=32, strategy="fsdp",
                             gpus=2).total_gib
    assert why == "" and peak == pytest.approx(want, abs=0.01)


def test_gpu_ids_of_the_settings(monkeypatch):
    from core.gpu_queue import resolve_gpu_ids, visible_gpu_ids

    assert resolve_gpu_ids("auto", "single", [0, 1, 2]) == [0]
    assert resolve_gpu_ids("auto", "ddp", [0, 1, 2]) == [0, 1, 2]
    assert resolve_gpu_ids("2", "fsdp", [0, 1, 2]) == [0, 1]
    assert resolve_gpu_ids("1,2", "ddp", [0, 1, 2]) == [1, 2]
    assert resolve_gpu_ids("1,2", "single", [0, 1, 2]) == [1]
    assert resolve_gpu_ids("auto", "ddp", []) == []
    hw = _cards((24, 24), (24, 24), (24, 24))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert visible_gpu_ids(hw) == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert visible_gpu_ids(hw) == [0, 1, 2]


def test_ids_within_cuda_visible_devices_are_the_launchers(tmp_path, monkeypatch):
    """With CUDA_VISIBLE_DEVICES=2,3 a run's GPU 0 is the machine's GPU 2 (the launcher numbers the
    cards it can see), so it holds up work on GPU 2, not on GPU 0."""
    from core.gpu_queue import resolve_gpu_ids, run_gpu_ids

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    hw = _cards((24, 23), (24, 23), (24, 2.0), (24, 23))
    run = _multi_run(tmp_path, "r", "0,", "single", gpus=[0])
    assert run_gpu_ids({"path": str(run), "status": {"gpus": [0]}}, [2, 3]) == [2]
    assert resolve_gpu_ids("1,", "single", [2, 3]) == [3] and resolve_gpu_ids("0,5", "ddp", [2, 3]) == [2]
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=hw, need_gib=20.0)
    assert d.gpus == [2] and not d.allowed and d.run == "r"  # chat goes to the first visible card: GPU 2
    d = may_start_gpu_work("chat", runs_dir=tmp_path, hardware=hw, need_gib=20.0, gpus=[3])
    assert d.allowed and d.code == "idle"

