"""What logging every step costs the training thread: core.train.callbacks as the trainer calls it.

    python bench/log_overhead.py --steps 200 --step-ms 100

Runs --steps simulated steps of --step-ms milliseconds of Python holding the GIL (a training step's
host side; the writer thread competes for the GIL), first bare, then with
ProgressCallback.on_step_end + on_log after each (what the HF Trainer calls per step with
logging_steps 1) against a real run folder: metrics.jsonl, status.json and, on a GPU machine, the
NVML reading, all through the writer thread. Reported: the overhead (extra wall time over the bare
steps; the target is under 2% at the grid's smallest step), the time of the calls on the training
thread (mean, p99, max) and of a status write on the writer thread. --slow-disk-ms delays every
status write to show that a slow disk does not reach the training thread. Appends one line to
<out>/log_overhead.jsonl. Runs anywhere (no model is loaded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def busy(seconds: float) -> None:
    """A training step's host side: Python holding the GIL (the writer thread competes for it)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(steps: int, step_ms: float, slow_disk_ms: float, run_dir: Path) -> dict:
    from core.train import runs
    from core.train.callbacks import GpuSampler, LogWriter, ProgressCallback, TokenCounter

    gpu = GpuSampler()
    lines: list[str] = []
    writer_times: list[float] = []

    def status_write(**kw):
        t = time.perf_counter()
        if slow_disk_ms:
            time.sleep(slow_disk_ms / 1000)
        runs.write_status(run_dir, **kw)
        writer_times.append(time.perf_counter() - t)

    writer = LogWriter(run_dir, gpu=gpu, echo=lines.append, write_status=status_write)
    counter = TokenCounter(echo=lines.append)
    cb = ProgressCallback(run_dir, counter, gpu, echo=lines.append, writer=writer)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=4)
    control = SimpleNamespace(should_training_stop=False, should_save=False)

    t0 = time.perf_counter()  # the same steps without any logging
    for _ in range(steps):
        busy(step_ms / 1000)
    bare_s = time.perf_counter() - t0

    cb.on_train_begin(args, SimpleNamespace(global_step=0, max_steps=steps, epoch=0.0), control)
    per_call = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        busy(step_ms / 1000)
        counter.tokens += 8192
        state = SimpleNamespace(global_step=step, max_steps=steps, epoch=step / steps)
        t = time.perf_counter()
        cb.on_step_end(args, state, control)
        cb.on_log(args, state, control, logs={"loss": 1.0 + 1 / step, "learning_rate": 2e-4, "grad_norm": 0.3})
        per_call.append(time.perf_counter() - t)
    logged_s = time.perf_counter() - t0
    t = time.perf_counter()
    cb.on_train_end(args, state, control)
    flush_s = time.perf_counter() - t
    written = sum(1 for _ in (run_dir / runs.METRICS).open())
    per_call.sort()
    return {"steps": steps, "lines_written": written, "status_writes": len(writer_times),
            "overhead": (logged_s - bare_s) / bare_s,
            "call_mean_us": statistics.fmean(per_call) * 1e6,
            "call_p99_us": per_call[int(len(per_call) * 0.99)] * 1e6, "call_max_us": per_call[-1] * 1e6,
            "writer_status_ms": statistics.fmean(writer_times) * 1e3 if writer_times else None,
            "flush_at_end_s": flush_s, "gpu": gpu.name or "none", "nvml": gpu.handle is not None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--step-ms", type=float, default=150.0,
                   help="Step time to compare with (the grid's smallest step).")
    p.add_argument("--slow-disk-ms", type=float, default=0.0, help="Delay of every status write.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(args.steps, args.step_ms, args.slow_disk_ms, Path(tmp))
    res.update(step_ms=args.step_ms, slow_disk_ms=args.slow_disk_ms, date=time.strftime("%Y-%m-%d %H:%M"))
    res["targets"] = {"overhead<0.02": res["overhead"] < 0.02,
                      "every_line_written": res["lines_written"] == args.steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "log_overhead.jsonl").open("a") as f:
        f.write(json.dumps(res) + "\n")
    print(json.dumps(res, indent=1))
    return 0 if all(res["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
