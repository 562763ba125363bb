"""The estimator fit's pinned coefficients and the leave-one-out figure of bench/fit_vram.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from core.hardware.estimate import calibrate, load_coefficients
from tests.hardware.test_estimate_wide import _point

ROOT = Path(__file__).resolve().parents[2]
LAYER = "backends.unsloth.activations.unsloth.layer_scale"
CKPT = "backends.unsloth.activations.unsloth.ckpt_bytes"


def _points(coeffs):
    return [_point(coeffs, model, "qlora", 2048, mb, 16, "unsloth", "unsloth")
            for model in ("qwen3-4b", "qwen3-8b", "qwen3-14b") for mb in (1, 2, 4, 8)]


def test_a_kept_coefficient_stays_and_the_others_absorb_the_rest():
    base = load_coefficients()
    truth = base.with_values({CKPT: base.get(CKPT) * 1.5})
    fit = calibrate(_points(truth), base, keep=(LAYER,))
    assert fit.coefficients.get(LAYER) == base.get(LAYER)
    assert fit.coefficients.get(CKPT) == pytest.approx(base.get(CKPT) * 1.5, rel=0.02)
    assert max(abs(r["error"]) for r in fit.rows) < 0.01


def test_leave_one_out_predicts_each_point_from_the_others(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import fit_vram

    points = tmp_path / "vram.jsonl"
    points.write_text("".join(json.dumps(p) + "\n" for p in _points(load_coefficients())))
    assert fit_vram.main(["--points", str(points), "--leave-one-out", "micro_batch>2", "--keep", LAYER]) == 0
    out = capsys.readouterr().out
    assert "leave-one-out: each point predicted by a fit to the other 11" in out
    assert out.count("held out") == 6  # micro-batch 4 and 8 of three models
