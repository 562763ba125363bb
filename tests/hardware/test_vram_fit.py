"""The estimator against the stored GPU measurements (bench/results/vram.jsonl): every point within 10%
(or 0.2 GiB, for the smallest points).

Compared: the estimate's ``alloc_gib`` with the measured ``peak_alloc_gib``
(torch.cuda.max_memory_allocated in the trainer). The estimate's ``total_gib`` adds the allocator
slack and the CUDA context (what nvidia-smi shows) on top.
"""

from __future__ import annotations

import json

import pytest

from core.hardware.estimate import compare, read_points, usable_points
from tests.conftest import ROOT

VRAM_JSONL = ROOT / "bench" / "results" / "vram.jsonl"
NOT_MEASURED = ("bench/results/vram.jsonl does not exist yet: it is written on a GPU machine by "
                "`python bench/vram_sweep.py` (then refit with `python bench/fit_vram.py --write`)")
TOLERANCE = 0.10
# Below this the relative rule says nothing: a 1.6 GiB point's 10% is 0.16 GiB, about what the CUDA
# workspaces and the allocator's block rounding move between two runs of the same point.
FLOOR_GIB = 0.2
# GRPO's rollout terms rest on four points (0.6B and 4B; the sweep's 8B points did not finish in
# their time limit), so they are held to a wider bound until more are measured (docs/hardware.md).
STAGE_TOLERANCE = {"grpo": 0.20}


@pytest.mark.skipif(not VRAM_JSONL.exists(), reason=NOT_MEASURED)
def test_every_measured_point_is_within_10_percent():
    points = read_points(VRAM_JSONL)
    rows = compare(points)
    assert rows, "no usable measurement (status ok with peak_alloc_gib) in the file"
    bad = [f"{r['card']} {r['model']} {r['method']} {r['backend']} {r['seq_len']}x{r['micro_batch']}: measured "
           f"{r['measured_gib']:.2f}, estimated {r['estimated_gib']:.2f} GiB ({r['error']:+.1%})"
           for r in rows if abs(r["error"]) > STAGE_TOLERANCE.get(r.get("stage", "sft"), TOLERANCE)
           and abs(r["estimated_gib"] - r["measured_gib"]) > FLOOR_GIB]
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(not VRAM_JSONL.exists(), reason=NOT_MEASURED)
def test_measurements_cover_the_required_shapes():
    ok = usable_points(read_points(VRAM_JSONL))
    combos = {(p["model"], p["method"]) for p in ok}
    for key in ("qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-14b"):
        assert (key, "lora") in combos or (key, "qlora") in combos, key
    assert ("qwen3-32b", "qlora") in combos
    assert len({p["seq_len"] for p in ok}) >= 2 and len({p["micro_batch"] for p in ok}) >= 2
    assert all(p.get("card") for p in ok)


def test_fit_script_on_synthetic_measurements(tmp_path, capsys):
    from bench import fit_vram
    from core.hardware.estimate import load_coefficients
    from tests.hardware.test_estimate import SEED, _synthetic_points

    truth = load_coefficients(SEED).with_values({"backends.unsloth.logits_bytes": 1.0,
                                             "backends.unsloth.overhead_gib": 0.3})
    path = tmp_path / "vram.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in _synthetic_points(truth)))
    assert fit_vram.main(["--points", str(path), "--base", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert "after the refit" in out and "backends.unsloth.logits_bytes" in out and "oom:" in out
    assert fit_vram.main(["--points", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.skipif(not VRAM_JSONL.exists(), reason=NOT_MEASURED)
def test_held_out_points_of_both_backends_are_within_5_percent_up_to_32k_tokens():
    """The points kept out of the fit judge it: allocated and NVML, for Unsloth and transformers + PEFT."""
    held = [r for r in compare(read_points(VRAM_JSONL)) if r["held_out"]]
    for backend in ("unsloth", "peft"):
        rows = [r for r in held if r["backend"] == backend]
        assert rows and max(r["seq_len"] for r in rows) >= 32768, backend
        bad = [f"{r['model']} {r['method']} {r['seq_len']}x{r['micro_batch']} r{r['rank']}: "
               f"allocated {r['error']:+.1%}, NVML {r['nvml_error']:+.1%}"
               for r in rows if abs(r["error"]) > 0.05 or abs(r["nvml_error"]) > 0.05]
        assert not bad, f"{backend}: " + "; ".join(bad)
