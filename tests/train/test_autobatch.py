"""train.micro_batch auto: the effective batch is kept exactly, the estimator's fit is respected, and
without a GPU auto is the reference micro-batch and says why."""

from __future__ import annotations

import pytest

from core.hardware.estimate import estimate_training
from core.settings import ConfigError, from_dict
from core.train import autobatch
from core.train.autobatch import REFERENCE_MICRO_BATCH, SAFETY_MARGIN, choose_micro_batch

CARDS = (8.0, 12.0, 16.0, 24.0, 48.0, 80.0, 139.8)


def est(model, method, seq, m, **kw):
    return estimate_training(model, method=method, seq_len=seq, micro_batch=m, rank=kw.get("rank", 32)).total_gib


@pytest.mark.parametrize("model,method", [("qwen3-0.6b", "lora"), ("qwen3-4b", "lora"), ("qwen3-8b", "qlora"),
                                          ("qwen3-14b", "qlora")])
@pytest.mark.parametrize("seq", [1024, 2048, 4096])
@pytest.mark.parametrize("grad_accum", [1, 3, 4, 8])
def test_effective_batch_is_kept_and_the_estimate_fits(model, method, seq, grad_accum):
    for vram in CARDS:
        c = choose_micro_batch(model, vram_gib=vram, grad_accum=grad_accum, method=method, seq_len=seq)
        total = REFERENCE_MICRO_BATCH * grad_accum
        assert c.effective_batch == total and c.micro_batch * c.grad_accum == total
        budget = vram * (1 - SAFETY_MARGIN)
        if not c.fits:
            assert c.micro_batch == 1 and est(model, method, seq, 1) > budget
            continue
        assert est(model, method, seq, c.micro_batch) <= budget + 1e-6
        # the largest divisor of the effective batch that fits: the next one up does not
        bigger = [d for d in range(c.micro_batch + 1, total + 1) if total % d == 0]
        if bigger:
            assert est(model, method, seq, bigger[0]) > budget
        assert f"{c.micro_batch} x {c.grad_accum} accumulation = {total} rows" in c.reason


def test_a_bigger_card_never_gets_a_smaller_micro_batch():
    picks = [choose_micro_batch("qwen3-8b", vram_gib=v, grad_accum=8, method="qlora", seq_len=2048).micro_batch
             for v in CARDS]
    assert picks == sorted(picks) and picks[-1] == 16 and picks[0] < picks[-1]


def test_the_large_card_takes_the_whole_batch_at_1024_tokens():
    c = choose_micro_batch("qwen3-8b", vram_gib=139.8, grad_accum=4, method="qlora", seq_len=1024)
    assert (c.micro_batch, c.grad_accum) == (8, 1) and "whole effective batch" in c.reason


def test_a_fit_that_does_not_divide_takes_the_nearest_lower_divisor():
    # grad_accum 6: 12 rows per step; find a card where 5 rows fit but 6 do not
    model, method, seq = "qwen3-8b", "qlora", 4096
    e5, e6 = est(model, method, seq, 5), est(model, method, seq, 6)
    vram = (e5 + e6) / 2 / (1 - SAFETY_MARGIN)
    c = choose_micro_batch(model, vram_gib=vram, grad_accum=6, method=method, seq_len=seq)
    assert (c.micro_batch, c.grad_accum) == (4, 3)
    assert "5 would fit but does not divide 12" in c.reason


def test_nothing_fits_says_so():
    c = choose_micro_batch("qwen3-14b", vram_gib=4.0, grad_accum=4, method="lora", seq_len=4096)
    assert not c.fits and (c.micro_batch, c.grad_accum) == (1, 8) and "may run out of memory" in c.reason


def test_no_gpu_gives_the_reference_micro_batch_and_says_why():
    c = choose_micro_batch("qwen3-8b", vram_gib=None, grad_accum=4, method="qlora", seq_len=2048)
    assert (c.micro_batch, c.grad_accum, c.effective_batch) == (2, 4, 8) and "no CUDA GPU" in c.reason


def test_rank_and_backend_reach_the_estimate():
    small = choose_micro_batch("qwen3-8b", vram_gib=24, grad_accum=16, method="qlora", seq_len=2048, rank=16)
    peft = choose_micro_batch("qwen3-8b", vram_gib=24, grad_accum=16, method="qlora", seq_len=2048, rank=16,
                              backend="peft", grad_ckpt="on")
    assert peft.micro_batch < small.micro_batch  # PEFT keeps fp32 logits: less room per row


def test_config_accepts_auto_or_a_number():
    from core.config import RunConfig, TrainConfig

    assert TrainConfig().micro_batch == "auto"
    cfg = from_dict(RunConfig, {"train": {"micro_batch": "4"}, "data": {"mix_dir": "m"}})
    assert cfg.train.micro_batch == 4  # a GUI text box sends text
    cfg = from_dict(RunConfig, {"train": {"micro_batch": "Auto"}, "data": {"mix_dir": "m"}})
    assert cfg.train.micro_batch == "auto"
    with pytest.raises(ConfigError, match=r"train\.micro_batch: expected a whole number >= 1 or 'auto'"):
        from_dict(RunConfig, {"train": {"micro_batch": "two"}, "data": {"mix_dir": "m"}})
    with pytest.raises(ConfigError, match=r"train\.micro_batch: must be at least 1"):
        from_dict(RunConfig, {"train": {"micro_batch": 0}, "data": {"mix_dir": "m"}})


def test_cli_flag_takes_auto():
    import argparse

    from core.config import RunConfig
    from core.settings import add_cli_flags, cli_overrides

    p = argparse.ArgumentParser()
    add_cli_flags(p, RunConfig)
    assert cli_overrides(p.parse_args(["--train.micro-batch", "auto"]))["train"]["micro_batch"] == "auto"
    assert cli_overrides(p.parse_args(["--train.micro-batch", "8"]))["train"]["micro_batch"] == 8


def test_planned_micro_batch_reads_the_choice_from_status():
    assert autobatch.planned_micro_batch(4) == 4
    assert autobatch.planned_micro_batch("auto") == REFERENCE_MICRO_BATCH
    assert autobatch.planned_micro_batch("auto", {"micro_batch": 8}) == 8


def _cfg(micro_batch="auto", grad_accum=4):
    from core.config import RunConfig

    return from_dict(RunConfig, {"model": {"name_or_path": "demo", "method": "lora"},
                                 "train": {"micro_batch": micro_batch, "grad_accum": grad_accum},
                                 "data": {"mix_dir": "m"}})


def test_resolve_on_the_cpu_writes_the_choice_to_log_and_status(tmp_path, demo_model_path, monkeypatch):
    from core.train import backends, runs

    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    cfg, said = _cfg(), []
    choice = autobatch.resolve(cfg, tmp_path, demo_model_path, "peft", echo=said.append)
    assert (cfg.train.micro_batch, cfg.train.grad_accum) == (2, 4) and choice.micro_batch == 2
    status = runs.read_status(tmp_path)
    assert status["micro_batch"] == 2 and status["effective_batch"] == 8
    assert "no CUDA GPU" in status["micro_batch_reason"] and said == [status["micro_batch_reason"]]


def test_resolve_on_a_gpu_fits_its_free_memory(tmp_path, demo_model_path, monkeypatch):
    from core.train import backends

    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(autobatch, "card_gib", lambda device: (24.0, "NVIDIA L4, 24.0 GiB"))
    cfg = _cfg(grad_accum=16)
    choice = autobatch.resolve(cfg, tmp_path, "qwen3-8b", "unsloth", echo=lambda _: None)
    cfg_q = _cfg(grad_accum=16)
    cfg_q.model.method = "qlora"
    choice_q = autobatch.resolve(cfg_q, tmp_path, "qwen3-8b", "unsloth", echo=lambda _: None)
    assert choice.micro_batch * choice.grad_accum == 32 and "NVIDIA L4" in choice.reason
    assert choice_q.micro_batch > choice.micro_batch  # 4-bit weights leave room for more rows


def test_a_fixed_micro_batch_is_left_alone(tmp_path, monkeypatch):
    from core.train import backends, runs

    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    cfg = _cfg(micro_batch=3, grad_accum=5)
    assert autobatch.resolve(cfg, tmp_path, "demo", "peft") is None
    assert (cfg.train.micro_batch, cfg.train.grad_accum) == (3, 5)
    assert runs.read_status(tmp_path)["effective_batch"] == 15


def test_the_memory_cap_variable_is_checked(monkeypatch):
    monkeypatch.setenv(autobatch.CAP_ENV, "lots")
    with pytest.raises(ConfigError, match="must be a number of GiB"):
        autobatch.apply_memory_cap()
    monkeypatch.setenv(autobatch.CAP_ENV, "")
    assert autobatch.apply_memory_cap() is None


def test_the_hardware_tab_suggests_what_auto_picks():
    from core.hardware.recommend import recommend_for_vram

    rows = {(r.model, r.method): r for r in recommend_for_vram(24.0)}
    r = rows[("qwen3-8b", "qlora")]
    assert r.micro_batch == choose_micro_batch("qwen3-8b", vram_gib=24.0, grad_accum=4, method="qlora",
                                               seq_len=2048, rank=16).micro_batch
