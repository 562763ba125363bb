"""The VRAM estimator: known measurements, monotonic behaviour, breakdown, calibration."""

from __future__ import annotations

import json

import pytest

from core.hardware.catalog import get_model
from core.hardware.estimate import (
    Coefficients,
    calibrate,
    compare,
    estimate_inference,
    estimate_training,
    load_coefficients,
    training_terms,
)
from core.settings import ConfigError
from tests.conftest import ROOT

# Coefficients before any GPU calibration: tests of the fitting itself start from these, not from
# whatever the latest measurements made of the shipped file.
SEED = ROOT / "tests" / "fixtures" / "vram_seed_coefficients.json"

BASE = dict(method="qlora", seq_len=2048, micro_batch=2, rank=16)


def total(model="qwen3-8b", **kw):
    return estimate_training(model, **{**BASE, **kw}).total_gib


def test_known_peaks_of_qwen3_8b_qlora_are_within_10_percent():
    # Qwen3-8B QLoRA r=16 all-linear through `python -m core train` on an H200 (max_memory_allocated,
    # bench/results/vram.jsonl): Unsloth 2048 tokens x batch 2, 7.01 GiB; transformers + PEFT +
    # bitsandbytes 4096 x 1, 7.97 GiB (a point held out of the fit) and 16384 x 1, 14.16 GiB.
    unsloth = estimate_training("qwen3-8b", **BASE, backend="unsloth", grad_ckpt="unsloth")
    assert unsloth.alloc_gib == pytest.approx(7.01, rel=0.10)
    for seq_len, measured in ((4096, 7.97), (16384, 14.16)):
        peft = estimate_training("qwen3-8b", method="qlora", seq_len=seq_len, micro_batch=1, rank=16,
                                 backend="peft", grad_ckpt="on")
        assert peft.alloc_gib == pytest.approx(measured, rel=0.10)


def test_breakdown_adds_up_and_has_the_named_parts():
    est = estimate_training("qwen3-8b", **BASE)
    assert set(est.breakdown) == {"weights", "lora", "activations", "logits", "overhead"}
    assert sum(est.breakdown.values()) == pytest.approx(est.total_gib, abs=0.01)
    assert all(v >= 0 for v in est.breakdown.values())
    assert est.alloc_gib < est.total_gib  # the CUDA context and allocator slack come on top
    assert est.to_dict()["total_gib"] == est.total_gib


@pytest.mark.parametrize("knob, values", [
    ("seq_len", [256, 512, 1024, 2048, 4096, 8192, 32768]),
    ("micro_batch", [1, 2, 4, 8]),
    ("rank", [8, 16, 32, 64, 128]),
])
@pytest.mark.parametrize("backend, ckpt", [("unsloth", "unsloth"), ("unsloth", "off"), ("peft", "on")])
def test_memory_grows_with_each_knob(knob, values, backend, ckpt):
    for method in ("lora", "qlora"):
        totals = [total(**{"method": method, knob: v, "backend": backend, "grad_ckpt": ckpt}) for v in values]
        assert totals == sorted(totals) and len(set(totals)) == len(totals), (method, totals)


def test_memory_grows_with_model_size():
    keys = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"]
    for method in ("lora", "qlora"):
        totals = [total(k, method=method) for k in keys]
        assert totals == sorted(totals), totals


def test_qlora_saves_memory_and_checkpointing_modes_order():
    for key in ["qwen3-1.7b", "qwen3-8b", "qwen3-32b"]:
        assert total(key, method="qlora") < total(key, method="lora")
    off, on, offload = (total(grad_ckpt=m, seq_len=4096) for m in ("off", "on", "unsloth"))
    assert off > on > offload
    # measured: Qwen3-8B QLoRA through transformers + PEFT needs more than through Unsloth (7.97 GiB at
    # 4096 x 1 against 7.01 at 2048 x 2, bench/results/vram.jsonl)
    assert total(backend="peft", grad_ckpt="on") > total(backend="unsloth", grad_ckpt="unsloth")
    # Fewer target modules, fewer adapter parameters.
    assert total(target_modules=["q_proj", "v_proj"]) < total()
    # Unsloth's dynamic 4-bit keeps some layers in 16-bit: a little more than plain bnb 4-bit.
    assert total(quant="dynamic4") > total(quant="bnb4") == total(quant="nf4")
    assert total(optimizer="adamw_torch") > total(optimizer="adamw_8bit")


def test_accepts_arch_entry_key_or_local_folder(tmp_path, demo_model_path):
    entry = get_model("qwen3-8b")
    assert total(entry) == total(entry.arch) == total("qwen3-8b")
    assert total("Qwen/Qwen3-8B") == total("unsloth/qwen3-8b-unsloth-bnb-4bit") == total("qwen3-8b")
    assert estimate_training("demo", method="lora", seq_len=64, micro_batch=1).alloc_gib < 1.0
    with pytest.raises(ConfigError, match="unknown model"):
        total("someone/Llama-9B")
    tiny = estimate_training(str(demo_model_path), method="lora", seq_len=128, micro_batch=1)
    assert 0 < tiny.alloc_gib < 1.0
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="invalid JSON"):
        estimate_training(str(tmp_path), **BASE)


@pytest.mark.parametrize("kw, where", [
    ({"method": "full"}, "method"), ({"seq_len": 0}, "seq_len"), ({"micro_batch": 1.5}, "micro_batch"),
    ({"grad_ckpt": "yes"}, "grad_ckpt"), ({"backend": "axolotl"}, "backend"), ({"target_modules": []},
                                                                                 "target_modules"),
    ({"target_modules": ["lm_head"]}, "target_modules"),
])
def test_bad_inputs_name_the_setting(kw, where):
    with pytest.raises(ConfigError) as info:
        estimate_training("qwen3-8b", **{**BASE, **kw})
    assert info.value.where == where


def test_inference_estimate():
    short = estimate_inference("qwen3-8b", method="qlora", context_len=2048)
    long = estimate_inference("qwen3-8b", method="qlora", context_len=32768)
    assert set(short.breakdown) == {"weights", "adapter", "kv_cache", "activations", "overhead"}
    assert long.total_gib > short.total_gib
    # KV cache of Qwen3-8B: 2 (k, v) x 36 layers x 8 heads x 128 x 2 bytes = 144 KiB per token.
    assert long.breakdown["kv_cache"] == pytest.approx(32768 * 2 * 36 * 8 * 128 * 2 / 2**30, rel=0.01)
    with_adapter = estimate_inference("qwen3-8b", method="qlora", context_len=2048, adapter_rank=32)
    assert with_adapter.breakdown["adapter"] > 0 == short.breakdown["adapter"]
    lora = estimate_inference("qwen3-8b", method="lora", context_len=2048)
    assert lora.breakdown["weights"] == pytest.approx(8.19e9 * 2 / 2**30, rel=0.01)
    assert estimate_inference("qwen3-8b", method="lora", context_len=2048, batch=4).total_gib > lora.total_gib


def _synthetic_points(coeffs: Coefficients) -> list[dict]:
    """Points 'measured' with known coefficients, over the sweep's grid."""
    pts = []
    for model in ["qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"]:
        for method in ("lora", "qlora"):
            for seq in (512, 2048, 4096):
                for mb in (1, 2):
                    for backend, ckpt in (("unsloth", "unsloth"), ("peft", "on")):
                        est = estimate_training(model, method=method, seq_len=seq, micro_batch=mb, rank=16,
                                                backend=backend, grad_ckpt=ckpt, quant="nf4", coefficients=coeffs)
                        pts.append({"card": "test", "model": model, "method": method, "seq_len": seq,
                                    "micro_batch": mb, "rank": 16, "targets": "all", "grad_ckpt": ckpt,
                                    "backend": backend, "quant": "nf4", "status": "ok",
                                    "peak_alloc_gib": est.alloc_gib,
                                    "nvml_used_gib": est.alloc_gib * 1.08 + 0.6})
    pts.append({"card": "test", "model": "qwen3-32b", "method": "lora", "seq_len": 4096, "micro_batch": 2,
                "status": "oom", "peak_alloc_gib": None})
    return pts


def test_calibrate_recovers_known_coefficients():
    base = load_coefficients(SEED)
    truth = base.with_values({"backends.unsloth.logits_bytes": 1.5, "backends.unsloth.overhead_gib": 0.4,
                              "backends.unsloth.activations.unsloth.layer_scale": 1.7,
                              "backends.peft.logits_bytes": 11.0, "backends.peft.embed_bytes_qlora": 2.0,
                              "backends.peft.activations.on.ckpt_bytes": 2.5})
    points = _synthetic_points(truth)
    fit = calibrate(points, base)
    for path in ("backends.unsloth.logits_bytes", "backends.unsloth.activations.unsloth.layer_scale",
                 "backends.peft.logits_bytes", "backends.peft.embed_bytes_qlora"):
        assert fit.coefficients.get(path) == pytest.approx(truth.get(path), rel=0.02), path
    assert fit.max_abs_error < 0.005
    assert fit.coefficients.get("reserve_frac") == pytest.approx(0.08, abs=0.005)
    assert fit.coefficients.get("cuda_context_gib") == pytest.approx(0.6, abs=0.02)
    assert fit.coefficients.data["n_points"] == len(points) - 1  # the OOM point is left out
    # Coefficients no point exercises stay where they were.
    assert fit.coefficients.get("backends.unsloth.activations.off.layer_scale") == \
        base.get("backends.unsloth.activations.off.layer_scale")
    json.loads(fit.coefficients.dumps())


def test_calibrate_keeps_coefficients_non_negative():
    base = load_coefficients(SEED)
    pts = [p for p in _synthetic_points(base) if p.get("status") == "ok" and p["backend"] == "unsloth"]
    for p in pts:
        p["peak_alloc_gib"] *= 0.8  # measurements far below the physics
    fit = calibrate(pts, base)
    for terms in [training_terms(*__import__("core.hardware.estimate", fromlist=["point_setup"])
                                 .point_setup(p), base) for p in pts[:3]]:
        for t in terms:
            if t.coef:
                assert fit.coefficients.get(t.coef) >= 0


def test_compare_reports_relative_error():
    base = load_coefficients(SEED)
    pts = _synthetic_points(base)[:3]
    rows = compare(pts, base)
    assert len(rows) == 3 and all(abs(r["error"]) < 0.001 for r in rows)
    with pytest.raises(ValueError, match="no usable"):
        calibrate([{"status": "oom"}], base)
