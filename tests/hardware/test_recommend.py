"""Recommendations: verdicts, longest sequence, micro-batch, best pick, several GPUs."""

from __future__ import annotations

import pytest

from core.hardware.catalog import load_catalog
from core.hardware.detect import GpuInfo, HardwareReport, simulated
from core.hardware.estimate import estimate_training
from core.hardware.recommend import best_pick, recommend, recommend_for_vram, verdict_for


def test_verdict_thresholds():
    assert verdict_for(8.9, 10) == "fits"
    assert verdict_for(9.5, 10) == "tight"
    assert verdict_for(10.5, 10) == "no"


def test_every_model_and_method_is_ranked():
    rows = recommend_for_vram(24)
    assert len(rows) == 2 * len(load_catalog())
    assert {(r.model, r.method) for r in rows} == {(k, m) for k in load_catalog() for m in ("lora", "qlora")}
    order = [("fits", "tight", "no").index(r.verdict) for r in rows]
    assert order == sorted(order)
    assert sum(r.best for r in rows) == 1 and rows[0].best


@pytest.mark.parametrize("vram", [8, 12, 16, 24, 48, 80])
def test_rows_agree_with_the_estimator(vram):
    budget = vram * 0.9
    for r in recommend_for_vram(vram):
        est = estimate_training(r.model, method=r.method, seq_len=2048, micro_batch=1).total_gib
        assert r.est_gib == pytest.approx(est, abs=0.01)
        if r.max_seq_len:
            assert estimate_training(r.model, method=r.method, seq_len=r.max_seq_len, micro_batch=1).total_gib <= budget
        if r.max_seq_len and r.max_seq_len < 32768:
            assert estimate_training(r.model, method=r.method, seq_len=r.max_seq_len + 256,
                                     micro_batch=1).total_gib > budget
        if r.verdict == "fits":
            assert r.micro_batch >= 1 and r.max_seq_len >= 2048
            assert estimate_training(r.model, method=r.method, seq_len=2048,
                                     micro_batch=r.micro_batch).total_gib <= budget
        if r.verdict == "no":
            assert r.micro_batch == 0


def test_best_pick_is_the_largest_model_with_headroom():
    best = best_pick(recommend_for_vram(24))
    assert best is not None and best.verdict == "fits"
    bigger = [r for r in recommend_for_vram(24) if r.params_b > best.params_b]
    assert all(r.verdict != "fits" for r in bigger)
    small = best_pick(recommend_for_vram(6))
    assert small.params_b < best.params_b
    huge = best_pick(recommend_for_vram(80))
    assert huge.model == "qwen3-32b"
    assert best_pick(recommend_for_vram(0.5)) is None


def test_longer_sequences_lower_the_verdicts():
    short = {(r.model, r.method): r.est_gib for r in recommend_for_vram(24, seq_len=512)}
    long = {(r.model, r.method): r.est_gib for r in recommend_for_vram(24, seq_len=16384)}
    assert all(long[k] > short[k] for k in short)


def test_recommend_lists_rows_per_gpu():
    report = HardwareReport(gpus=[
        GpuInfo(index=0, name="NVIDIA GeForce RTX 3060", total_gib=12.0, free_gib=11.0, used_gib=1.0, bf16=True),
        GpuInfo(index=1, name="NVIDIA H100 80GB HBM3", total_gib=79.2, free_gib=79.0, used_gib=0.2, bf16=True),
    ])
    out = recommend(report)
    assert [g["name"] for g in out["gpus"]] == ["NVIDIA GeForce RTX 3060", "NVIDIA H100 80GB HBM3"]
    n = 2 * len(load_catalog())
    assert [r["gpu"] for r in out["recommendations"]] == [0] * n + [1] * n
    assert out["best"]["gpu"] == 1 and out["best"]["card"] == "NVIDIA H100 80GB HBM3"
    assert [b["gpu"] for b in out["best_per_gpu"]] == [0, 1]
    for r in out["recommendations"]:
        assert set(r) >= {"model", "method", "est_gib", "verdict", "max_seq_len"}
        assert r["verdict"] in ("fits", "tight", "no")


def test_no_gpu_gives_empty_lists_and_the_reason():
    out = recommend(HardwareReport(message="no NVIDIA GPU found: CPU demo mode only"))
    assert out["gpus"] == [] and out["recommendations"] == [] and out["best"] is None
    assert out["message"].startswith("no NVIDIA GPU found")


def test_simulated_report():
    out = recommend(simulated(12))
    assert out["system"]["simulated"] and out["gpus"][0]["total_gib"] == 12.0


# --------------------------------------------------------------------------------- several cards
def test_cards_rows_judge_ddp_and_fsdp_per_card():
    from core.hardware.recommend import recommend_for_cards

    rows = recommend_for_cards(2, 48, seq_len=1024)
    assert len(rows) == 2 * len(load_catalog()) and sum(r.best for r in rows) == 1
    for r in rows:
        ddp = estimate_training(r.model, method=r.method, seq_len=1024, micro_batch=1, strategy="ddp", gpus=2)
        fsdp = estimate_training(r.model, method=r.method, seq_len=1024, micro_batch=1, strategy="fsdp", gpus=2,
                                 backend="peft", grad_ckpt="on")
        assert r.ddp_gib == pytest.approx(ddp.total_gib, abs=0.01)
        assert r.fsdp_gib == pytest.approx(fsdp.total_gib, abs=0.01)
        # ddp wherever it fits; fsdp only where ddp does not
        if r.ddp_verdict == "fits":
            assert r.strategy == "ddp"
        elif r.fsdp_verdict == "fits":
            assert r.strategy == "fsdp"
        assert r.effective_batch == 8  # micro_batch auto: 2 x grad_accum 4 rows, 4 on each card
        assert r.micro_batch in (0, 1, 2, 4)
    big = next(r for r in rows if r.model == "qwen3-32b" and r.method == "lora")
    assert big.ddp_verdict == "no" and big.strategy == "fsdp" and big.verdict == "fits"
    assert big.sentence().startswith("Qwen3-32B LoRA 16-bit fits 2 x 48 GB with fsdp")
    assert big.micro_batch >= 1 and big.max_seq_len >= 1024


def test_more_cards_make_bigger_models_fit():
    from core.hardware.recommend import recommend_for_cards

    def fitting(n, verdicts=("fits",)):
        return {(r.model, r.method) for r in recommend_for_cards(n, 24) if r.verdict in verdicts}

    assert fitting(2) <= fitting(4) <= fitting(8)
    # 32B in 16 bits on 8 x 24 GB sits at the 90% line (about 21.7 GiB per card): fits or just fits
    assert ("qwen3-32b", "qlora") in fitting(4) and ("qwen3-32b", "lora") in fitting(8, ("fits", "tight"))
    assert ("qwen3-32b", "lora") not in fitting(4, ("fits", "tight"))
    none = recommend_for_cards(2, 2)
    assert not any(r.best for r in none)
    hopeless = next(r for r in none if r.model == "qwen3-235b-a22b" and r.method == "lora")
    assert hopeless.verdict == "no" and hopeless.strategy == "fsdp"  # the smaller of two misses
    assert "does not fit" in hopeless.sentence()


def test_recommend_adds_the_multi_card_plan_for_several_gpus():
    two = recommend(simulated(48, count=2))
    assert two["multi"]["gpus"] == 2 and two["multi"]["ids"] == [0, 1]
    assert two["multi"]["best"]["strategy"] in ("ddp", "fsdp") and "2 x 48 GB" in two["multi"]["sentence"]
    assert recommend(simulated(48))["multi"] is None
    assert recommend(simulated(48, count=3), gpus=2)["multi"]["ids"] == [0, 1]
    # cards of different sizes: planned at the smallest
    mixed = HardwareReport(gpus=[GpuInfo(index=0, name="A", total_gib=80.0, free_gib=80.0, used_gib=0.0),
                                 GpuInfo(index=1, name="B", total_gib=24.0, free_gib=24.0, used_gib=0.0)])
    assert recommend(mixed)["multi"]["vram_gib"] == 24.0


# ---------------------------------------------------------------------------------------- stages
def test_stage_recommendations_use_the_stage_terms():
    from core.config import RLConfig

    sft = {(r.model, r.method): r for r in recommend_for_vram(24, seq_len=2048)}
    dpo = {(r.model, r.method): r for r in recommend_for_vram(24, seq_len=2048, stage="dpo")}
    for key, r in dpo.items():
        est = estimate_training(key[0], method=key[1], seq_len=2048, micro_batch=1, stage="dpo")
        assert r.est_gib == pytest.approx(est.total_gib, abs=0.01) and r.est_gib > sft[key].est_gib
    rl = RLConfig(max_prompt_len=256, max_completion_len=2048, num_generations=8)
    grpo = recommend_for_vram(24, stage="grpo", rl=rl)
    r = next(x for x in grpo if x.model == "qwen3-8b" and x.method == "qlora")
    # judged at rl's prompt + completion, the rollouts decoding micro_batch auto's 8 completions at once
    want = estimate_training("qwen3-8b", method="qlora", seq_len=2048, micro_batch=1, stage="grpo", rl=rl,
                             generation_batch=8)
    assert r.seq_len == 256 + 2048 and r.est_gib == pytest.approx(want.total_gib, abs=0.01)
    # the longest row: prompt + the longest completion that fits
    assert r.max_seq_len > 256 and (r.max_seq_len - 256) % 256 == 0
    longest = RLConfig(max_prompt_len=256, max_completion_len=r.max_seq_len - 256, num_generations=8)
    assert estimate_training("qwen3-8b", method="qlora", seq_len=2048, micro_batch=1, stage="grpo", rl=longest,
                             generation_batch=8).total_gib <= 24 * 0.9
    multi = recommend(simulated(24, count=2), stage="grpo", rl=rl)["multi"]
    assert multi["recommendations"] and all(x["seq_len"] == 256 + 2048 for x in multi["recommendations"])
