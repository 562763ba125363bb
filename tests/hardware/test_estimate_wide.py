"""The estimator's long-row and rank terms, and held-out points kept out of the fit."""

from __future__ import annotations

import json

import pytest

from core.hardware.catalog import get_model
from core.hardware.estimate import (
    calibrate,
    compare,
    estimate_training,
    layer_activation_elems,
    load_coefficients,
)
from tests.hardware.test_estimate import SEED


def _point(coeffs, model, method, seq, mb, rank, backend, ckpt, held=False):
    est = estimate_training(model, method=method, seq_len=seq, micro_batch=mb, rank=rank, backend=backend,
                            grad_ckpt=ckpt, quant="nf4", coefficients=coeffs)
    return {"card": "test", "model": model, "method": method, "seq_len": seq, "micro_batch": mb, "rank": rank,
            "targets": "all", "grad_ckpt": ckpt, "backend": backend, "quant": "nf4", "status": "ok",
            "held_out": held, "peak_alloc_gib": est.alloc_gib, "nvml_used_gib": est.alloc_gib * 1.02 + 1.5}


def _wide_points(coeffs):
    pts = []
    for model in ("qwen3-4b", "qwen3-8b", "qwen3-14b"):
        for seq in (2048, 8192, 16384, 32768):
            for backend, ckpt in (("unsloth", "unsloth"), ("peft", "on")):
                for rank in (16, 64, 128):
                    held = (seq == 16384 and rank == 64) or (model == "qwen3-8b" and seq == 32768)
                    pts.append(_point(coeffs, model, "qlora", seq, 1, rank, backend, ckpt, held))
    return pts


def test_lora_intermediates_count_per_rank_and_target():
    arch = get_model("qwen3-8b").arch
    assert layer_activation_elems(arch, 128, 7) - layer_activation_elems(arch, 16, 7) == 112 * 7
    assert layer_activation_elems(arch) == layer_activation_elems(arch, 0, 7)


def test_rank_grows_adapter_state_and_activations():
    lo = estimate_training("qwen3-8b", method="qlora", seq_len=8192, micro_batch=1, rank=16)
    hi = estimate_training("qwen3-8b", method="qlora", seq_len=8192, micro_batch=1, rank=128)
    assert hi.breakdown["lora"] == pytest.approx(lo.breakdown["lora"] * 8, rel=0.01)
    assert hi.breakdown["activations"] > lo.breakdown["activations"]


def test_a_square_attention_term_is_recovered_from_long_rows():
    """If the backend materialises query x key tensors, the 8k-32k rows show it and the fit finds it."""
    base = load_coefficients(SEED)
    truth = base.with_values({"backends.peft.attn_pair_bytes": 2.0, "backends.peft.logits_bytes": 9.0,
                              "backends.unsloth.activations.unsloth.ckpt_bytes": 0.4})
    fit = calibrate(_wide_points(truth), base)
    assert fit.coefficients.get("backends.peft.attn_pair_bytes") == pytest.approx(2.0, rel=0.05)
    assert fit.coefficients.get("backends.unsloth.attn_pair_bytes") == pytest.approx(0.0, abs=0.05)
    held = [r for r in fit.rows if r["held_out"]]
    assert held and max(abs(r["error"]) for r in held) < 0.01


def test_held_out_points_stay_out_of_the_fit():
    base = load_coefficients(SEED)
    pts = _wide_points(base)
    n_held = sum(p["held_out"] for p in pts)
    for p in pts:
        if p["held_out"]:
            p["peak_alloc_gib"] *= 3  # wildly off: if these were fitted, the coefficients would move
    fit = calibrate(pts, base)
    assert fit.coefficients.data["n_points"] == len(pts) - n_held
    fitted = [r for r in fit.rows if not r["held_out"]]
    assert max(abs(r["error"]) for r in fitted) < 0.005
    assert all(r["error"] == pytest.approx(-2 / 3, abs=0.01) for r in fit.rows if r["held_out"])
    assert len(compare(pts, base)) == len(pts)


def test_fit_script_reports_the_held_out_figure(tmp_path, capsys):
    from bench import fit_vram

    base = load_coefficients(SEED)
    path = tmp_path / "vram.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in _wide_points(base)))
    assert fit_vram.main(["--points", str(path), "--base", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert "held-out points (kept out of the fit)" in out and "peft:" in out and "unsloth:" in out
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["held_out"], rows[0]["peak_alloc_gib"] = True, rows[0]["peak_alloc_gib"] * 1.2
    path.write_text("".join(json.dumps(p) + "\n" for p in rows))
    assert fit_vram.main(["--points", str(path), "--base", str(SEED)]) == 1  # a held-out point 17% off
    summary = fit_vram.held_out_summary(calibrate(rows, base).rows)
    assert summary["worst_error"] == pytest.approx(1 / 6, rel=0.05) and summary["per_backend"]


def test_allocator_slack_of_each_backends_transient_parts_is_recovered():
    """NVML's figure minus the allocated peak: the CUDA context, a share of the whole, and a share of
    what each step allocates and frees (activations, logits) that differs by backend."""
    base = load_coefficients(SEED)
    truth = base.with_values({"cuda_context_gib": 1.4, "reserve_frac": 0.03,
                              "backends.peft.transient_reserve_frac": 0.15,
                              "backends.unsloth.transient_reserve_frac": 0.0})
    pts = _wide_points(truth)
    for p in pts:
        p["nvml_used_gib"] = estimate_training(p["model"], method="qlora", seq_len=p["seq_len"], micro_batch=1,
                                               rank=p["rank"], backend=p["backend"], grad_ckpt=p["grad_ckpt"],
                                               quant="nf4", coefficients=truth).total_gib
    fit = calibrate(pts, base)
    got = fit.coefficients
    assert got.get("cuda_context_gib") == pytest.approx(1.4, abs=0.02)
    assert got.get("reserve_frac") == pytest.approx(0.03, abs=0.003)
    assert got.get("backends.peft.transient_reserve_frac") == pytest.approx(0.15, abs=0.005)
    assert got.get("backends.unsloth.transient_reserve_frac") == pytest.approx(0.0, abs=0.005)
    held = [r for r in fit.rows if r["held_out"]]
    assert held and max(abs(r["nvml_error"]) for r in held) < 0.005
    long = estimate_training("qwen3-8b", method="qlora", seq_len=32768, micro_batch=1, backend="peft",
                             grad_ckpt="on", quant="nf4", coefficients=truth)
    parts = long.breakdown
    slack = long.total_gib - long.alloc_gib - 1.4 - 0.03 * long.alloc_gib
    assert slack == pytest.approx(0.15 * (parts["activations"] + parts["logits"]), abs=0.01)
