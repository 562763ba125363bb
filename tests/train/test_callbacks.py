"""The logging path: a slow disk never blocks the training thread, and every line still lands, in
order, when training ends, stops or fails."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")


class SlowDisk:
    """metrics.jsonl and status.json writes that each take ``delay`` seconds (a network disk)."""

    def __init__(self, path, delay=0.05):
        self.path = path
        self.delay = delay
        self.status: dict = {}
        self.status_writes = 0
        self.writer_threads: set[str] = set()

    def write_status(self, **kw):
        time.sleep(self.delay)
        self.writer_threads.add(threading.current_thread().name)
        self.status.update(kw)
        self.status_writes += 1

    def open_metrics(self):
        disk = self

        class File:
            def __init__(self):
                self.f = disk.path.open("a", encoding="utf-8")

            def write(self, text):
                time.sleep(disk.delay)
                disk.writer_threads.add(threading.current_thread().name)
                self.f.write(text)

            def flush(self):
                self.f.flush()

            def close(self):
                self.f.close()

        return File()


class NoGpu:
    cuda = False

    def sample(self):
        return {"gpu_mem_gib": None, "gpu_util": None}

    def peaks(self):
        return {}


def make_callback(tmp_path, disk, echo=None):
    from core.train.callbacks import LogWriter, ProgressCallback, TokenCounter

    lines = [] if echo is None else echo
    counter = TokenCounter(echo=lines.append)
    writer = LogWriter(tmp_path, gpu=NoGpu(), echo=lines.append, write_status=disk.write_status,
                       open_metrics=disk.open_metrics)
    cb = ProgressCallback(tmp_path, counter, NoGpu(), echo=lines.append, writer=writer)
    return cb, counter, lines


def state(step, max_steps=50):
    return SimpleNamespace(global_step=step, max_steps=max_steps, epoch=step / max_steps)


def control():
    return SimpleNamespace(should_training_stop=False, should_save=False)


def train_steps(cb, counter, steps, first=1):
    """What the HF Trainer calls per step with logging_steps=1; the longest call is returned."""
    worst = 0.0
    for step in range(first, first + steps):
        counter.tokens += 1000
        t = time.perf_counter()
        cb.on_step_end(None, state(step), control())
        cb.on_log(None, state(step), control(), logs={"loss": 2.0 - step / 100, "learning_rate": 1e-4,
                                                      "grad_norm": 0.5})
        worst = max(worst, time.perf_counter() - t)
    return worst


def read_steps(tmp_path):
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["loss"] is not None], rows


def test_a_slow_disk_does_not_block_steps_and_every_line_lands_in_order(tmp_path, monkeypatch):
    from core.train import runs

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)  # on_train_begin's direct write
    disk = SlowDisk(tmp_path / "metrics.jsonl", delay=0.05)
    cb, counter, lines = make_callback(tmp_path, disk)
    cb.on_train_begin(None, state(0), control())
    worst = train_steps(cb, counter, 30)
    # 30 steps x 2 writes x 50 ms would be 3 s on the training thread; a step's logging must not
    # wait on the disk at all.
    assert worst < 0.02, f"a step's logging took {worst * 1000:.1f} ms"
    cb.on_train_end(None, state(30), control())
    steps, rows = read_steps(tmp_path)
    assert steps == list(range(1, 31))
    assert [r["tokens"] for r in rows] == [1000 * s for s in range(1, 31)]
    assert disk.status["step"] == 30 and disk.status["loss"] == pytest.approx(1.7)
    # Pending status updates merge into fewer writes than steps (status.json keeps the latest only).
    assert disk.status_writes < 30
    assert disk.writer_threads == {"train-log-writer"}
    assert [x for x in lines if x.startswith("step ")][-1].startswith("step 30/50 | loss 1.7000")


def test_lines_land_when_training_stops_or_fails(tmp_path, monkeypatch):
    from core.train import runs

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)
    disk = SlowDisk(tmp_path / "metrics.jsonl", delay=0.03)
    cb, counter, _ = make_callback(tmp_path, disk)
    cb.on_train_begin(None, state(0), control())
    train_steps(cb, counter, 5)
    (tmp_path / runs.STOP_FLAG).write_text("stop")
    c = cb.on_step_end(None, state(6), control())
    assert c.should_training_stop and c.should_save
    train_steps(cb, counter, 4, first=6)
    # trainer.train raised (an exception ends it without on_train_end): the worker flushes.
    cb.flush()
    steps, _ = read_steps(tmp_path)
    assert steps == list(range(1, 10))
    assert disk.status["state"] == "stopping" and disk.status["step"] == 9


def test_worker_flushes_the_queue_when_the_trainer_raises(tmp_path, monkeypatch):
    """The worker's try/finally around trainer.train drains the queue before it writes 'failed'."""
    from core.train import runs, worker

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)
    disk = SlowDisk(tmp_path / "metrics.jsonl", delay=0.03)
    cb, counter, _ = make_callback(tmp_path, disk)

    class Trainer:
        state = SimpleNamespace(global_step=0)

        def train(self, resume_from_checkpoint=None):
            cb.on_train_begin(None, state(0), control())
            train_steps(cb, counter, 7)
            raise RuntimeError("CUDA error: an illegal memory access")

    from core.train.heap import CollectorPacing

    prepared = worker.Prepared(Trainer(), cb, counter, NoGpu(), "off", CollectorPacing())
    monkeypatch.setattr(worker, "prepare_trainer", lambda *a, **kw: prepared)
    cfg = SimpleNamespace(train=SimpleNamespace())
    with pytest.raises(RuntimeError, match="illegal memory"):
        worker._train(cfg, tmp_path, SimpleNamespace(), None, None, resume=False)
    steps, _ = read_steps(tmp_path)
    assert steps == list(range(1, 8))


def test_a_broken_disk_is_reported_not_hidden(tmp_path, monkeypatch):
    from core.train import runs

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)
    disk = SlowDisk(tmp_path / "metrics.jsonl", delay=0)

    def full(**kw):
        raise OSError(28, "No space left on device")

    disk.write_status = full
    cb, counter, _ = make_callback(tmp_path, disk)
    cb.on_train_begin(None, state(0), control())
    with pytest.raises(RuntimeError, match="No space left"):
        train_steps(cb, counter, 3)
        cb.flush()


def test_writes_outside_training_are_direct(tmp_path, monkeypatch):
    """The final evaluation's line is on disk when on_log returns, before the worker's next status."""
    from core.train import runs

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)
    disk = SlowDisk(tmp_path / "metrics.jsonl", delay=0.02)
    cb, counter, _ = make_callback(tmp_path, disk)
    cb.on_train_begin(None, state(0), control())
    train_steps(cb, counter, 2)
    cb.on_train_end(None, state(2), control())
    cb.on_log(None, state(2), control(), logs={"eval_loss": 1.25})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_loss"] == 1.25 and disk.status["eval_loss"] == 1.25


def test_the_step_path_makes_no_gpu_calls(tmp_path, monkeypatch):
    """GPU sampling (NVML, torch counters) runs on the writer thread only."""
    from core.train import runs

    monkeypatch.setattr(runs, "write_status", lambda *a, **kw: None)
    disk = SlowDisk(tmp_path / "metrics.jsonl", delay=0)
    cb, counter, _ = make_callback(tmp_path, disk)
    seen = []

    class Gpu(NoGpu):
        def sample(self):
            seen.append(threading.current_thread().name)
            return {"gpu_mem_gib": 1.0, "gpu_util": 50}

        def peaks(self):
            seen.append(threading.current_thread().name)
            return {"peak_alloc_gib": 2.0}

    cb.writer.gpu = Gpu()
    cb.on_train_begin(None, state(0), control())
    train_steps(cb, counter, 4)
    cb.flush()
    assert seen and set(seen) == {"train-log-writer"}
    _, rows = read_steps(tmp_path)
    assert all(r["gpu_mem_gib"] == 1.0 for r in rows)
    assert disk.status["peak_alloc_gib"] == 2.0


def test_the_gpu_sampler_keeps_this_process_share_of_a_shared_card():
    """The card's used memory counts every process on it; the run's own share comes from NVML's
    process list, and is left out where NVML does not list this process."""
    import os
    from types import SimpleNamespace

    from core.train.callbacks import GIB, GpuSampler

    class FakeNvml:
        NVMLError = RuntimeError

        def __init__(self, procs):
            self.procs = procs

        def nvmlDeviceGetMemoryInfo(self, handle):
            return SimpleNamespace(used=40 * GIB)

        def nvmlDeviceGetUtilizationRates(self, handle):
            return SimpleNamespace(gpu=90)

        def nvmlDeviceGetComputeRunningProcesses(self, handle):
            return self.procs

    class FakeCuda:
        @staticmethod
        def max_memory_allocated(device):
            return 2 * GIB

        max_memory_reserved = max_memory_allocated

    def sampler(procs):
        gpu = GpuSampler()
        gpu.cuda, gpu.handle, gpu.device, gpu.name = True, object(), 0, "NVIDIA H200"
        gpu.nvml, gpu.torch = FakeNvml(procs), SimpleNamespace(cuda=FakeCuda)
        return gpu

    gpu = sampler([SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=30 * GIB),
                   SimpleNamespace(pid=os.getpid(), usedGpuMemory=int(3.5 * GIB))])
    assert gpu.sample()["gpu_mem_gib"] == 40.0
    peaks = gpu.peaks()
    assert peaks["nvml_used_gib"] == 40.0 and peaks["nvml_process_gib"] == 3.5

    gpu = sampler([SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=30 * GIB)])  # PIDs NVML cannot see
    gpu.sample()
    assert "nvml_process_gib" not in gpu.peaks()
