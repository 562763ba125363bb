"""Per-card estimates for several cards (ddp, fsdp) and for the stages beyond SFT (dpo, orpo, grpo)."""

from __future__ import annotations

import pytest

from core.config import DataConfig, ModelConfig, RLConfig, RunConfig, TrainConfig
from core.hardware.catalog import get_model, lora_param_count, param_counts
from core.hardware.estimate import (
    GIB,
    calibrate,
    estimate_run,
    estimate_training,
    gpu_count_of,
    load_coefficients,
)
from core.settings import ConfigError

BASE = dict(seq_len=2048, micro_batch=1)


def est(model="qwen3-8b", method="lora", **kw):
    return estimate_training(model, method=method, **{**BASE, **kw})


# ------------------------------------------------------------------------------------ strategies
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_ddp_per_card_is_one_cards_figure(method):
    for n in (2, 4, 8):
        assert est(method=method, strategy="ddp", gpus=n).total_gib == est(method=method).total_gib
    # ... and single ignores the card count
    assert est(method=method, strategy="single", gpus=4).total_gib == est(method=method).total_gib


def test_fsdp_shards_weights_and_adapter_state_and_adds_the_gathered_parts():
    c = load_coefficients()
    arch = get_model("qwen3-32b").arch
    counts = param_counts(arch)
    one = est("qwen3-32b", strategy="fsdp", gpus=1)
    two = est("qwen3-32b", strategy="fsdp", gpus=2)
    four = est("qwen3-32b", strategy="fsdp", gpus=4)
    assert one.total_gib > two.total_gib > four.total_gib
    # fsdp runs on transformers + PEFT
    assert two.setup["backend"] == "peft" and two.setup["strategy"] == "fsdp" and two.setup["gpus"] == 2
    # weights: linear bf16 / N + embedding etc. / N + the root kept whole + gather_layers layers
    layer = counts.linear / arch.layers * 2.0
    want = (counts.linear * 2.0 / 2 + (counts.embed + counts.other) * c.get("backends.peft.embed_bytes_lora") / 2
            + (counts.embed + counts.other) * c.get("strategies.fsdp.root_gather_bytes")
            + layer * c.get("strategies.fsdp.gather_layers")) / GIB
    assert two.breakdown["weights"] == pytest.approx(want, abs=0.002)
    n_lora = lora_param_count(arch, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj"])
    # the adapter's parameters, gradients and 8-bit states (10 bytes each), sharded, times the
    # share of them the backend holds at its peak
    share = c.get("backends.peft.adapter_peak_share")
    assert two.breakdown["lora"] == pytest.approx(n_lora * 10.0 * share / 2 / GIB, abs=0.002)
    # activations and logits are per card, as on one card of the same backend
    peft = est("qwen3-32b", backend="peft", grad_ckpt="on")
    assert two.breakdown["activations"] == peft.breakdown["activations"]
    assert two.breakdown["logits"] == peft.breakdown["logits"]


def test_fsdp_makes_qwen3_32b_lora_fit_two_48gb_cards():
    one_card = est("qwen3-32b", seq_len=1024)
    two_cards = est("qwen3-32b", seq_len=1024, strategy="fsdp", gpus=2)
    assert one_card.total_gib > 48 and two_cards.total_gib <= 48 * 0.9


def test_bad_strategy_and_gpus_name_the_setting():
    with pytest.raises(ConfigError, match="train.strategy"):
        est(strategy="zero3")
    with pytest.raises(ConfigError, match="gpus"):
        est(strategy="fsdp", gpus=0)


def test_gpu_count_of_the_setting():
    assert gpu_count_of("auto") is None and gpu_count_of("") is None
    assert gpu_count_of("2") == 2 and gpu_count_of("0,1") == 2 and gpu_count_of("1,3,5") == 3
    assert gpu_count_of("two") is None


# ---------------------------------------------------------------------------------------- stages
def test_sft_keeps_its_five_parts_and_its_figures():
    sft = est(method="qlora", micro_batch=2)
    assert est(method="qlora", micro_batch=2, stage="sft", rl=RLConfig(kl_beta=0.5)).total_gib == sft.total_gib
    assert set(sft.breakdown) == {"weights", "lora", "activations", "logits", "overhead"}
    assert sft.phase == "step" and sft.phases == {"step": sft.total_gib}


def test_orpo_is_a_pair_per_row_with_no_reference():
    c = load_coefficients()
    arch = get_model("qwen3-8b").arch
    orpo = est(method="qlora", stage="orpo", micro_batch=2)
    sft4 = est(method="qlora", micro_batch=4)  # 2 rows x (chosen + rejected) = 4 sequences
    assert orpo.breakdown["activations"] == sft4.breakdown["activations"]
    assert orpo.breakdown["reference"] == 0.0
    per_entry = c.get("backends.unsloth.stage_logits_bytes")
    assert orpo.breakdown["logits"] == pytest.approx(4 * 2048 * arch.vocab * per_entry / GIB, abs=0.002)


def test_dpo_reference_pass_counts_unless_precomputed():
    orpo = est(method="qlora", stage="orpo", micro_batch=2)
    dpo = est(method="qlora", stage="dpo", micro_batch=2)
    pre = est(method="qlora", stage="dpo", micro_batch=2, precompute_ref=True)
    # The reference is the adapter disabled: no second copy of the weights.
    assert dpo.breakdown["weights"] == orpo.breakdown["weights"]
    assert dpo.breakdown["reference"] > 0 and dpo.total_gib > orpo.total_gib
    # Precomputed: a pass of its own before training, smaller than the step, so the step is the peak.
    assert pre.total_gib == orpo.total_gib and pre.phase == "step"
    assert set(pre.phases) == {"step", "reference"} and pre.phases["reference"] < pre.phases["step"]
    assert dpo.setup["precompute_ref"] is False and pre.setup["precompute_ref"] is True


def test_grpo_counts_completions_generations_and_the_kl_reference():
    rl = RLConfig(max_prompt_len=256, max_completion_len=1024, num_generations=8, kl_beta=0.0)
    base = est(method="qlora", stage="grpo", micro_batch=4, rl=rl)
    assert set(base.phases) == {"step", "generation"}
    assert base.setup["prompt_len"] == 256 and base.setup["completion_len"] == 1024
    # the training forward covers prompt + completion tokens of micro_batch completions, like SFT of
    # rows that long; only the completion's logits are scored (Unsloth's fused log-probs chunk them)
    sft = est(method="qlora", micro_batch=4, seq_len=256 + 1024)
    assert base.phases["step"] == pytest.approx(sft.total_gib, rel=0.05)
    # more completions decoded at once: a bigger KV cache, and at some point the generation is the peak
    gens = [est(method="qlora", stage="grpo", micro_batch=4, rl=rl, generation_batch=g).phases["generation"]
            for g in (4, 16, 64)]
    assert gens == sorted(gens) and len(set(gens)) == 3
    big = est(method="qlora", stage="grpo", micro_batch=4, rl=rl, generation_batch=256)
    assert big.phase == "generation" and big.breakdown["generation"] > 0 and big.breakdown["activations"] == 0
    assert sum(big.breakdown.values()) == pytest.approx(big.total_gib, abs=0.01)
    longer = est(method="qlora", stage="grpo", micro_batch=4, rl=RLConfig(max_completion_len=4096))
    assert longer.total_gib > est(method="qlora", stage="grpo", micro_batch=4, rl=RLConfig()).total_gib
    # a KL penalty adds a reference pass (adapter disabled), not a copy of the weights
    kl = est(method="qlora", stage="grpo", micro_batch=4, rl=RLConfig(**{**rl.__dict__, "kl_beta": 0.04}))
    assert set(kl.phases) == {"step", "generation", "reference"} and kl.setup["kl"] is True
    assert kl.breakdown["weights"] == base.breakdown["weights"]


def test_rl_settings_as_a_dict_and_bad_values():
    a = est(method="qlora", stage="grpo", micro_batch=2, rl={"max_completion_len": 2048})
    b = est(method="qlora", stage="grpo", micro_batch=2, rl=RLConfig(max_completion_len=2048))
    assert a.total_gib == b.total_gib
    with pytest.raises(ConfigError, match="rl.max_completion_len"):
        est(stage="grpo", rl={"max_completion_len": 0})
    with pytest.raises(ConfigError, match="train.stage"):
        est(stage="ppo")


def _cfg(**train):
    return RunConfig(model=ModelConfig(name_or_path="qwen3-8b", method="qlora"),
                     train=TrainConfig(**{"micro_batch": 2, **train}), data=DataConfig(mix_dir="m"))


def test_estimate_run_reads_stage_rl_and_strategy_from_the_config():
    cfg = _cfg(stage="grpo", grad_accum=4)
    cfg.rl.max_completion_len = 2048
    got = estimate_run(cfg)
    want = estimate_training("qwen3-8b", method="qlora", seq_len=2048, micro_batch=2, rank=cfg.lora.r,
                             stage="grpo", rl=cfg.rl, generation_batch=8)
    assert got.total_gib == want.total_gib
    fsdp = estimate_run(_cfg(strategy="fsdp", gpus="0,1"))
    assert fsdp.setup["gpus"] == 2 and fsdp.setup["strategy"] == "fsdp"
    assert estimate_run(_cfg(strategy="fsdp", gpus="auto"), gpus=4).setup["gpus"] == 4
    with pytest.raises(ConfigError, match="train.micro_batch"):
        estimate_run(_cfg(micro_batch="auto"))
    assert estimate_run(_cfg(micro_batch="auto"), micro_batch=1).setup["micro_batch"] == 1


def test_stage_points_refit_the_stage_coefficients():
    c = load_coefficients()
    truth = c.with_values({"backends.unsloth.stage_logits_bytes": 4.0, "stages.kv_bytes": 2.6})
    pts = []
    for model in ("qwen3-0.6b", "qwen3-4b", "qwen3-8b"):
        # SFT points beside them, as a real sweep has: they pin the terms every stage shares
        for stage, mb, gen in (("sft", 1, None), ("sft", 4, None), ("orpo", 1, None), ("orpo", 2, None),
                               ("grpo", 2, 64), ("grpo", 4, 128)):
            rl = {"max_prompt_len": 256, "max_completion_len": 1024}
            e = estimate_training(model, method="qlora", seq_len=2048, micro_batch=mb, stage=stage, rl=rl,
                                  generation_batch=gen, coefficients=truth)
            pts.append({"model": model, "method": "qlora", "seq_len": 2048, "micro_batch": mb, "stage": stage,
                        "rl": rl, "generation_batch": gen, "status": "ok", "peak_alloc_gib": e.alloc_gib})
    fit = calibrate(pts, c)
    assert fit.coefficients.get("backends.unsloth.stage_logits_bytes") == pytest.approx(4.0, rel=0.1)
    assert fit.coefficients.get("stages.kv_bytes") == pytest.approx(2.6, rel=0.02)
    assert fit.max_abs_error < 0.02
    assert {r["stage"] for r in fit.rows} == {"sft", "orpo", "grpo"}


# ------------------------------------------------------------------------- auto micro-batch, pre-run check
def test_auto_micro_batch_counts_pairs_completions_and_cards():
    from core.train.autobatch import choose_micro_batch

    kw = dict(vram_gib=24, grad_accum=8, method="qlora", seq_len=2048, rank=16)
    sft = choose_micro_batch("qwen3-8b", **kw)
    dpo = choose_micro_batch("qwen3-8b", stage="dpo", **kw)
    assert dpo.micro_batch < sft.micro_batch  # two sequences per row, and materialised logits
    assert dpo.effective_batch == sft.effective_batch == 16
    grpo = choose_micro_batch("qwen3-8b", stage="grpo", rl=RLConfig(max_completion_len=3072), **kw)
    assert "completions" in grpo.reason and grpo.effective_batch == 16
    # the rollouts decode the whole effective batch at once, whatever the micro-batch
    e = estimate_training("qwen3-8b", method="qlora", seq_len=2048, micro_batch=grpo.micro_batch, stage="grpo",
                          rl=RLConfig(max_completion_len=3072), generation_batch=16)
    assert grpo.est_gib == pytest.approx(e.total_gib, abs=0.01)
    # fsdp over 4 cards lets 16-bit Qwen3-14B train on 24 GB cards, per card
    one = choose_micro_batch("qwen3-14b", vram_gib=24, grad_accum=4, method="lora", seq_len=1024)
    four = choose_micro_batch("qwen3-14b", vram_gib=24, grad_accum=4, method="lora", seq_len=1024,
                              strategy="fsdp", gpus=4, backend="peft", grad_ckpt="on")
    assert not one.fits and four.fits and "per GPU (4 GPUs, fsdp)" in four.reason


def test_stage_options_count_the_runs_processes():
    from core.train.autobatch import stage_options

    cfg = _cfg(stage="dpo", strategy="ddp")
    opts = stage_options(cfg, world_size=4)
    assert opts["gpus"] == 4 and opts["strategy"] == "ddp" and opts["stage"] == "dpo" and opts["rl"] is cfg.rl
    assert stage_options(_cfg(), world_size=4)["gpus"] == 1  # single: one card
    assert stage_options(cfg)["gpus"] == 1


def test_auto_on_several_cards_fits_each_cards_share():
    from core.train.autobatch import choose_micro_batch, share_rows

    rows, _ = share_rows(8, 4)  # 2 x 8 = 16 rows per step over 4 cards
    assert rows == 4
    choice = choose_micro_batch("qwen3-8b", vram_gib=80, grad_accum=8, method="qlora", seq_len=2048,
                                strategy="ddp", gpus=4, rows=rows, stage="grpo")
    assert choice.effective_batch == 4 and choice.micro_batch * choice.grad_accum == 4
    # grpo: this card's rollouts decode its share of the step at once
    e = estimate_training("qwen3-8b", method="qlora", seq_len=2048, micro_batch=choice.micro_batch, stage="grpo",
                          generation_batch=4, strategy="ddp", gpus=4, rank=32)
    assert choice.est_gib == pytest.approx(e.total_gib, abs=0.01)


def test_pre_run_check_warns_per_card_with_the_stage(monkeypatch):
    from core.train.validate import Card, check_run

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    card = Card("NVIDIA RTX 4090", 24.0)
    sft = _cfg(micro_batch=4)
    grpo = _cfg(micro_batch=4, stage="grpo", grad_accum=8)
    grpo.rl.max_completion_len = 4096
    grpo.rl.num_generations = 8
    assert not [p for p in check_run(sft, train_rows=1000, card=card) if p.setting == "train.micro_batch"]
    warned = [p for p in check_run(grpo, train_rows=1000, card=card) if p.setting == "train.micro_batch"]
    assert warned and warned[0].code in ("micro_batch_over_card", "micro_batch_none_fits")
    big = RunConfig(model=ModelConfig(name_or_path="qwen3-32b", method="lora"),
                    train=TrainConfig(micro_batch=1, max_seq_len=1024, strategy="fsdp", gpus="0,1"),
                    data=DataConfig(mix_dir="m"))
    assert not [p for p in check_run(big, train_rows=1000, card=Card("L40S", 48.0))
                if p.setting == "train.micro_batch"]
    big.train.strategy = "ddp"
    assert [p for p in check_run(big, train_rows=1000, card=Card("L40S", 48.0)) if p.setting == "train.micro_batch"]


def test_auto_gpus_count_the_cards_the_run_gets(monkeypatch):
    from core.hardware.estimate import visible_gpu_count

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert visible_gpu_count() == 3
    assert estimate_run(_cfg(strategy="fsdp", gpus="auto")).setup["gpus"] == 3
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a rank: the launcher's count
    assert visible_gpu_count() == 2
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_count() == 1  # none visible: the estimate is still per one card
