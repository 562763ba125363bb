"""The GPU benchmarks, run end to end on the CPU with a tiny shape and the PEFT backend.

GPU time is scarce (minutes per session), so a benchmark that breaks should break here first: these
runs go through the same code as on the GPU (the project's trainer via `python -m core train`, the
bare loop, the per-variant processes and the records they append), only smaller."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def bench_module(name: str):
    """A bench script imported as a module (its own imports expect bench/ on the path)."""
    import importlib

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def bench(script: str, tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, f"bench/{script}.py", "--shape", "tiny", "--backend", "peft",
                           "--work", str(tmp_path / "work"), "--out", str(out), "--seq", "256", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in (out / f"{script}.jsonl").read_text().splitlines()]


def test_train_speed_mixed_modes_through_the_trainer(tmp_path):
    rows = bench("train_speed", tmp_path, "--steps", "4", "--warmup", "1", "--phases", "mixed",
                 "--mixed-modes", "off,packing,bucket,auto")
    by = {r["setup"]: r for r in rows}
    for mode in ("off", "packing", "bucket"):
        assert by[f"mixed-{mode}"]["tokens_per_s"] > 0 and by[f"mixed-{mode}"]["packing"] == mode
    assert by["mixed-auto"]["packing"] == "bucket" and by["mixed-auto"]["packing_requested"] == "auto"
    summary = by["summary"]
    assert summary["mixed_bucket_vs_padded"] > 0 and summary["mixed_packing_vs_padded"] > 0
    targets = summary["targets"]
    assert targets["project_vs_bare>=0.95"] is None  # not measured in this call: null, not false
    assert targets["mixed_best_vs_padded>=1.5"] in (True, False)


def test_step_profile_runs_each_variant_in_its_own_process(tmp_path):
    rows = bench("step_profile", tmp_path, "--steps", "5", "--warmup", "1", "--variants",
                 "bare,bare-mask,worker,worker-no-freeze,stock-trl")
    assert [r["variant"] for r in rows] == ["bare", "bare-mask", "worker", "worker-no-freeze", "stock-trl"]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["steps_timed"] >= 2 and "error" not in r
        assert r["profile"]["wall_ms"] > 0 and r["profile"]["top_host_ops"]
        assert r["gc_collections"] >= 0
        # the training thread's own CPU time and where it ran, from /proc
        assert 0 < r["host"]["main_cpu_s"] <= r["host"]["wall_s"] * 1.05 and r["host"]["main_cpus"]
    bare, masked, worker, unfrozen, stock = rows
    assert bare["method"] == masked["method"] == "qlora"
    assert worker["callbacks"] is True and worker["packing"] == "off"
    assert worker["gc_tracked_objects"] < unfrozen["gc_tracked_objects"] / 10  # core.train.heap.settle froze the heap
    # the PEFT backend's trainer against TRL's as it is: five host syncs fewer per micro-batch
    assert worker["trainer_class"].endswith("LeanSFTTrainer") and stock["trainer_class"].endswith(".SFTTrainer")
    syncs = {r["variant"]: r["profile"]["syncs"].get("aten::item", 0) for r in rows}
    assert syncs["stock-trl"] - syncs["worker"] == 5 * 2  # accum 2


def test_step_profile_records_a_variant_that_runs_out_of_time_and_goes_on(tmp_path):
    rows = bench("step_profile", tmp_path, "--steps", "3", "--warmup", "1", "--variants", "bare,worker",
                 "--phase-timeout", "1")
    assert [r["variant"] for r in rows] == ["bare", "worker"]
    assert all("timed out after 1s" in r["error"] for r in rows)


def test_resume_check_kills_a_run_and_resumes_it_to_the_planned_step(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/resume_check.py", "--shape", "tiny", "--backend", "peft",
                           "--work", str(tmp_path / "work"), "--out", str(out), "--seq", "256",
                           "--steps", "60", "--save-steps", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "resume_check.jsonl").read_text())
    assert res["ok"] and res["after_kill"]["state"] == "failed" and res["after_kill"]["resumable"]
    assert 2 <= res["after_kill"]["killed_at_step"] < 60
    assert res["first_step_after_checkpoint"] == 3 and res["step"] == 60 and res["packing"] == "bucket"


def test_train_grid_measures_trainer_and_bare_loop_on_one_load(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/train_grid.py", "--shapes", "tiny", "--methods", "lora",
                           "--seqs", "128x2", "--backend", "peft", "--steps", "3", "--warmup", "1",
                           "--layout", "shared",
                           "--work", str(tmp_path / "work"), "--out", str(out), "--auto-compare",
                           "--packings", "auto,padding_free", "--autocasts", "on", "--call", "smoke"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "train_grid.jsonl").read_text().splitlines()]
    by = {r.get("kind", r.get("setup")): r for r in rows}
    assert set(by) == {"trainer", "trainer-padding_free", "trainer-autocast-on", "mb2x4", "mb-auto", "summary"}
    # every trainer run starts from the adapter as loaded, so their losses compare step by step
    # (float32 on the CPU: train.autocast on has nothing to cast, so they agree)
    assert by["trainer-autocast-on"]["autocast"] is False
    assert by["trainer-autocast-on"]["loss_all"] == by["trainer"]["loss_all"]
    assert len(by["trainer"]["loss_all"]) == 3
    point = by["trainer"]
    assert point["layout"] == "shared"
    assert "error" not in point and point["tokens_per_s"] > 0 and point["bare_tokens_per_s"] > 0
    assert point["ratio"] == pytest.approx(point["tokens_per_s"] / point["bare_tokens_per_s"])
    assert point["packing"] == "off" and by["trainer-padding_free"]["packing"] == "padding_free"
    assert by["mb-auto"]["micro_batch_reason"].startswith("micro-batch auto: no CUDA GPU")
    assert by["mb-auto"]["micro_batch"] * by["mb-auto"]["grad_accum"] == 8
    summary = by["summary"]
    assert summary["points"] == 1 and summary["worst_point"] == "tiny lora 128x2"
    assert set(summary["targets"]) == {"trainer_vs_bare>=0.95", "auto_vs_2x4>=1.15"}
    # a CPU run records no peaks, so nothing tells the two programs apart
    assert point["anchor_check"] == "ok"
    # every step's time on both sides, and the ratio of their medians over the timed steps
    assert len(point["step_s_all"]) == len(point["bare_step_s_all"]) == 3
    assert point["ratio_median"] == pytest.approx(
        statistics.median(point["bare_step_s_all"][1:]) / statistics.median(point["step_s_all"][1:]), abs=1e-3)
    assert summary["worst_point_median"] == "tiny lora 128x2"


def test_train_grid_median_ratio_leaves_out_warmup_and_odd_slow_steps():
    train_grid = bench_module("train_grid")

    # a 0.5 s collector pause in one timed trainer step moves the mean, not the median
    trainer = [9.0, 0.8, 0.8, 1.3, 0.8, 0.8]
    bare = [5.0, 0.78, 0.78, 0.78, 0.78, 0.78]
    assert train_grid.median_ratio(trainer, bare, 1) == pytest.approx(0.78 / 0.8)
    assert train_grid.median_ratio(trainer, None, 1) is None
    assert train_grid.median_ratio(trainer[:1], bare, 1) is None


def test_train_grid_leaves_a_bare_loop_of_another_memory_plan_out_of_the_worst_ratio():
    train_grid = bench_module("train_grid")

    assert train_grid.anchor_check(9.44, 9.42) == "ok"
    assert train_grid.anchor_check(None, 9.42) == "ok"
    # the bare loop run after a trainer, without gradient checkpointing (H200, 4B LoRA 1024 x 8)
    assert "35.63 GiB against the trainer's 9.44 GiB" in train_grid.anchor_check(9.44, 35.63)

    def row(seq, ratio, bare_peak):
        return {"call": "c", "kind": "trainer", "shape": "4b", "method": "lora", "seq": seq, "micro_batch": 1,
                "ratio": ratio, "device": "NVIDIA H200",
                "anchor_check": train_grid.anchor_check(9.0, bare_peak)}

    summary = train_grid.summarise([row(1024, 0.58, 35.6), row(2048, 0.97, 9.1), row(4096, 0.99, 9.0)], "c")
    assert summary["points"] == 2 and summary["not_comparable"] == ["4b lora 1024x1"]
    assert summary["worst_ratio"] == 0.97 and summary["targets"]["trainer_vs_bare>=0.95"]


def test_train_grid_repeats_each_child_and_counts_the_point_once(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/train_grid.py", "--shapes", "tiny", "--methods", "lora",
                           "--seqs", "128x2", "--backend", "peft", "--steps", "2", "--warmup", "1",
                           "--repeats", "2", "--cpus", "fastest:1",
                           "--work", str(tmp_path / "work"), "--out", str(out), "--call", "rep"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "train_grid.jsonl").read_text().splitlines()]
    points = [r for r in rows if r.get("kind") == "trainer"]
    assert [r["repeat"] for r in points] == [0, 1] and all(r["ratio"] > 0 for r in points)
    # split layout (the default): each repeat's bare loop ran in its own process and handed its
    # figure to the trainer's process
    assert all(r["layout"] == "split" and r["bare_tokens_per_s"] > 0 and len(r["bare_step_s_all"]) == 2
               for r in points)
    assert points[0]["bare_tokens_per_s"] != points[1]["bare_tokens_per_s"]
    summary = rows[-1]
    assert summary["setup"] == "summary" and summary["points"] == 1
    assert summary["worst_point_repeats"] == sorted(round(r["ratio"], 4) for r in points)
    assert summary["worst_ratio_pooled"] == pytest.approx(
        statistics.median(r["tokens_per_s"] for r in points)
        / statistics.median(r["bare_tokens_per_s"] for r in points), abs=1e-4)
    # --cpus fastest:1: each child was probed for and pinned to one CPU, and both sides say which
    for r in points:
        assert r["cpus"] == ",".join(map(str, r["cpu_probe"]["chosen"])) and len(r["cpu_probe"]["chosen"]) == 1
        assert r["bare_cpu_probe"]["policy"] == "fastest:1" and r["cpu_probe"]["cpu_speed_max"] > 0


def test_train_grid_split_layout_without_a_bare_result_records_why_and_no_ratio(tmp_path):
    train_grid = bench_module("train_grid")

    part = tmp_path / "bare-c-4b-qlora-0.json"
    part.write_text(json.dumps({"1024x8": {"tokens_per_s": 18000.0, "step_s_all": [1.0, 0.9]}}))
    bare = train_grid.read_bare_part(part, [(1024, 8), (2048, 2)])
    assert bare[(1024, 8)]["tokens_per_s"] == 18000.0
    assert "no bare loop result in bare-c-4b-qlora-0.json" in bare[(2048, 2)]["error"]
    # a bare child that died before writing anything: every point says so
    gone = train_grid.read_bare_part(tmp_path / "none.json", [(1024, 8)])
    assert "failed or ran out of time" in gone[(1024, 8)]["error"]


def test_train_grid_judges_a_repeated_point_by_the_median_of_its_ratios():
    train_grid = bench_module("train_grid")

    def row(seq, ratio, repeat, median=None):
        return {"call": "c", "kind": "trainer", "shape": "4b", "method": "qlora", "seq": seq, "micro_batch": 8,
                "ratio": ratio, "ratio_median": median, "repeat": repeat, "device": "NVIDIA H200"}

    # one slow child out of three does not decide the point; three children of one point count once
    rows = [row(1024, 0.80, 0, 0.97), row(1024, 0.99, 1, 0.99), row(1024, 0.97, 2, 0.98),
            row(2048, 0.96, 0, 0.96)]
    summary = train_grid.summarise(rows, "c")
    assert summary["points"] == 2
    assert summary["worst_ratio"] == 0.96 and summary["worst_point"] == "4b qlora 2048x8"
    assert "worst_point_repeats" not in summary  # measured once
    assert summary["worst_ratio_median"] == 0.96
    rows.append(row(2048, 0.99, 1, 0.995))
    rows.append(row(1024, 0.90, 3, 0.90))
    summary = train_grid.summarise(rows, "c")
    assert summary["worst_ratio"] == 0.935 and summary["worst_point"] == "4b qlora 1024x8"
    assert summary["worst_point_repeats"] == [0.8, 0.9, 0.97, 0.99]
    assert summary["worst_ratio_median"] == 0.975 and summary["worst_point_median"] == "4b qlora 1024x8"


def test_fit_cards_trains_the_recommendation_with_auto_micro_batch(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/fit_cards.py", "--stand-in", "--backend", "peft",
                           "--no-cap", "--caps", "48", "--steps", "2", "--seq", "256",
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (out / "fit_cards.jsonl").read_text().splitlines()]
    assert row["state"] == "done" and not row["oom"] and row["steps"] == 2
    assert (row["model"], row["method"]) == ("qwen3-32b", "qlora")  # the tab's pick for 48 GB
    assert "stand-in" in row["substitute"]
    assert row["micro_batch"] * row["grad_accum"] == 8


def test_fit_cards_judges_the_cap_by_the_measured_footprint():
    fit_cards = bench_module("fit_cards")

    # the process's own NVML count decides where the driver gives one
    assert fit_cards.under_cap({"nvml_process_gib": 27.92, "nvml_used_gib": 58.18}, 48.0, 1.87) == (
        True, "nvml_process_gib")
    # the card-wide reading can only over-count: 11.88 GiB used on a 12 GiB card is under it
    assert fit_cards.under_cap({"nvml_used_gib": 11.88, "peak_reserved_gib": 10.49}, 12.0, 1.87) == (
        True, "nvml_used_gib")
    assert fit_cards.under_cap({"nvml_used_gib": 12.3}, 12.0, 1.87)[0] is False
    # without NVML (no reading on this driver) the reserved peak plus the fitted context estimate it
    assert fit_cards.under_cap({"peak_reserved_gib": 10.49}, 12.0, 1.87) == (
        False, "peak_reserved_gib + cuda_context_gib")
    assert fit_cards.under_cap({}, 12.0, 1.87) == (None, None)


def test_log_overhead_writes_every_line_and_reports_the_share(tmp_path):
    proc = subprocess.run([sys.executable, "bench/log_overhead.py", "--steps", "30", "--step-ms", "5",
                           "--slow-disk-ms", "20", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    (row,) = [json.loads(line) for line in (tmp_path / "log_overhead.jsonl").read_text().splitlines()]
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: over 2% on a busy machine; timing is the GPU box's
    assert row["lines_written"] == 30 and row["targets"]["every_line_written"]
    assert row["status_writes"] < 30  # merged: status.json keeps the latest values only
    assert {"overhead", "call_p99_us", "writer_status_ms"} <= set(row)


def test_cpu_probe_times_every_allowed_cpu_and_restores_the_affinity():
    cpu_probe = bench_module("cpu_probe")
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    before = os.sched_getaffinity(0)
    result = cpu_probe.probe(rounds=1, work=2_000)
    assert os.sched_getaffinity(0) == before
    assert set(result) == before and all(v["speed"] > 0 for v in result.values())
    fake = {0: {"speed": 1.0, "steal": 0.0}, 1: {"speed": 3.0, "steal": 0.0}, 2: {"speed": 2.0, "steal": 0.2}}
    assert cpu_probe.fastest(2, fake) == [1, 2]
    assert cpu_probe.spread(fake) == {"cpu_speed_min": 1.0, "cpu_speed_max": 3.0, "cpu_speed_ratio": 0.333}


def test_train_grid_paired_layout_times_a_bare_step_after_every_trainer_step(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/train_grid.py", "--shapes", "tiny", "--methods", "lora",
                           "--seqs", "128x2", "--backend", "peft", "--steps", "4", "--warmup", "1",
                           "--layout", "paired", "--work", str(tmp_path / "work"), "--out", str(out),
                           "--call", "pair"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "train_grid.jsonl").read_text().splitlines()]
    point = next(r for r in rows if r.get("kind") == "trainer")
    assert "error" not in point and point["layout"] == "paired"
    # one bare step per trainer step, both timed in the trainer's own process
    assert len(point["step_s_all"]) == len(point["bare_step_s_all"]) == 4
    assert all(t > 0 for t in point["step_s_all"] + point["bare_step_s_all"])
    assert point["ratio"] == pytest.approx(point["tokens_per_s"] / point["bare_tokens_per_s"])
    q1, q2, q3 = point["pair_ratio_quartiles"]
    assert 0 < q1 <= q2 <= q3
    # the trainer trained every step and logged it (worker.run finished the run as `done`)
    assert len(point["loss_all"]) == 4 and point["anchor_check"] == "ok"
    summary = rows[-1]
    assert summary["setup"] == "summary" and summary["worst_point"] == "tiny lora 128x2"
