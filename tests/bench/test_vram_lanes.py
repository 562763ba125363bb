"""bench/vram_sweep.py --lanes: several points on one card, admitted by their estimates, each judged by
its own process's memory (the trainer's runs are stubbed; the scheduling and the lines are real)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sweep():
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    import vram_sweep

    return vram_sweep


def test_lanes_admit_by_estimate_retry_a_crowded_oom_alone_and_use_the_process_figure(tmp_path, monkeypatch):
    v = _sweep()
    points = [v.Point("qwen3-0.6b", "lora", 1024 * (n + 1), 1) for n in range(5)]
    crowded_oom = points[2].name
    flight, most, alone_runs = set(), [0], []
    lock = threading.Lock()

    def fake_run(point, work, timeout_s, keep_runs, arch=None, cpu_ranks=0, lane=0):
        with lock:
            flight.add(point.name)
            most[0] = max(most[0], len(flight))
            others = len(flight) - 1
        time.sleep(0.05)
        with lock:
            flight.discard(point.name)
        if point.name == crowded_oom and others:
            return {"status": "oom", "peak_alloc_gib": None, "nvml_used_gib": None, "nvml_process_gib": None,
                    "backend": "unsloth", "wall_s": 0.1, "run": point.name}
        if point.name == crowded_oom:
            alone_runs.append(point.name)
        return {"model": point.model, "seq_len": point.seq_len, "status": "ok", "peak_alloc_gib": 2.0,
                "nvml_used_gib": 50.0, "nvml_process_gib": 3.0, "backend": "unsloth", "wall_s": 0.1,
                "run": point.name}

    monkeypatch.setattr(v, "nvml_card", lambda: (0.5, 40.0))  # 0.5 GiB used idle, a 40 GiB card
    monkeypatch.setattr(v, "prepare_point", lambda *a, **k: None)
    monkeypatch.setattr(v, "point_need_gib", lambda point, arch: 12.0)  # three fit in 0.92 x 40 - 0.5
    monkeypatch.setattr(v, "run_point", fake_run)

    class Args:
        lanes, time_budget, point_timeout, keep_runs, leave_gib = 4, 600.0, 60.0, False, 0.0

    out = tmp_path / "vram.jsonl"
    assert v.run_lanes(points, Args, tmp_path, out, {"card": "NVIDIA H200"}, {}, time.perf_counter()) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert most[0] == 3  # the fourth lane stays idle: the estimates of four do not fit
    assert sorted(line["seq_len"] for line in lines) == [1024, 2048, 3072, 4096, 5120]  # nothing lost
    assert alone_runs == [crowded_oom] and all(line["status"] == "ok" for line in lines)
    by_name = {line["run"]: line for line in lines}
    assert by_name[crowded_oom]["lanes"] == 1
    for line in lines:
        # the card-level figure: this process's own count plus the card's idle use, not the whole card
        assert line["nvml_used_gib"] == 3.5 and line["nvml_device_gib"] == 50.0 and line["nvml_idle_gib"] == 0.5


def test_a_points_need_is_the_estimate_with_room(monkeypatch):
    v = _sweep()
    from core.hardware.catalog import get_model

    small = v.point_need_gib(v.Point("qwen3-0.6b", "lora", 1024, 1), get_model("qwen3-0.6b").arch)
    big = v.point_need_gib(v.Point("qwen3-14b", "qlora", 32768, 1), get_model("qwen3-14b").arch)
    grpo = v.stage_grid(("grpo",))[0]
    assert 1.0 < small < big
    assert v.point_need_gib(grpo, get_model(grpo.model).arch) > 1.0
