"""How fast each CPU of this machine runs Python right now, and how much time the hypervisor took.

    python bench/cpu_probe.py --rounds 3

A training step that is bound by the host (the 0.6B shapes on an H200: the GPU busy ~160 ms of a
~500 ms step) runs at the speed of the core its Python thread lands on. On a virtual machine
that speed is not the same on every virtual CPU: a core whose physical sibling or neighbour
belongs to another guest runs the same code slower, and the hypervisor's steal time shows how
often it was taken away. This probe pins itself to each CPU in turn and times a fixed piece of
interpreter work there (attribute lookups, dict and list churn, small calls: what a step's host
side is made of), so a benchmark can tell the cores apart and pin both sides of a comparison to
the same fast ones. bench/train_grid.py --cpus fastest:N uses it before every child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


class _Obj:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b


def _work(n: int) -> int:
    acc = 0
    d: dict = {}
    items = []
    for i in range(n):
        o = _Obj(i, i ^ 0x5A)
        d[i & 255] = o
        items.append(o.a + o.b)
        if len(items) > 64:
            acc += sum(items)
            items.clear()
        acc ^= d.get((i * 7) & 255, o).b
    return acc


def cpu_ticks() -> dict[int, list[int]]:
    """Per CPU the tick counters of /proc/stat (user, nice, system, idle, iowait, irq, softirq,
    steal, ...); {} where there is none (not Linux)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    return {int(line.split()[0][3:]): [int(x) for x in line.split()[1:]]
            for line in lines if line.startswith("cpu") and line[3:4].isdigit()}


def _steal() -> dict[int, tuple[int, int]]:
    """Per CPU (steal ticks, all ticks)."""
    return {cpu: (f[7] if len(f) > 7 else 0, sum(f[:8])) for cpu, f in cpu_ticks().items()}


def probe(cpus: list[int] | None = None, rounds: int = 2, work: int = 20_000) -> dict:
    """Time `work` iterations of interpreter work on each CPU, `rounds` times round the list (so a
    drift of the machine over the probe spreads over every CPU). Returns per CPU the median
    iterations per microsecond and the share of the probe the hypervisor stole from it. The calling
    thread's CPU affinity is restored afterwards. RuntimeError where threads cannot be pinned."""
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("no CPU affinity on this platform")
    allowed = sorted(os.sched_getaffinity(0))
    cpus = [c for c in (cpus or allowed) if c in allowed]
    speed: dict[int, list[float]] = {c: [] for c in cpus}
    steal0 = _steal()
    try:
        for _ in range(rounds):
            for cpu in cpus:
                os.sched_setaffinity(0, [cpu])
                _work(work // 10)  # land on the core before timing
                t = time.perf_counter()
                _work(work)
                speed[cpu].append(work / ((time.perf_counter() - t) * 1e6))
    finally:
        os.sched_setaffinity(0, allowed)
    steal1 = _steal()
    out = {}
    for cpu in cpus:
        (s0, t0), (s1, t1) = steal0.get(cpu, (0, 0)), steal1.get(cpu, (0, 0))
        out[cpu] = {"speed": round(statistics.median(speed[cpu]), 3),
                    "steal": round((s1 - s0) / (t1 - t0), 3) if t1 > t0 else None}
    return out


def fastest(n: int, result: dict) -> list[int]:
    """The n CPUs with the highest probed speed, in CPU order."""
    return sorted(sorted(result, key=lambda c: -result[c]["speed"])[:n])


def spread(result: dict) -> dict:
    """Slowest and fastest CPU speed and their ratio: how much landing on another core can cost."""
    speeds = [v["speed"] for v in result.values()]
    if not speeds:
        return {}
    return {"cpu_speed_min": min(speeds), "cpu_speed_max": max(speeds),
            "cpu_speed_ratio": round(min(speeds) / max(speeds), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=int, default=20_000, help="Iterations per timing (about 10 ms).")
    p.add_argument("--out", default="", help="Append the result as one JSON line to this file.")
    args = p.parse_args(argv)
    try:
        result = probe(rounds=args.rounds, work=args.work)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    for cpu, v in result.items():
        print(f"cpu {cpu:3d}: {v['speed']:.3f} it/us, steal {v['steal']}")
    summary = spread(result)
    print(json.dumps(summary))
    if args.out:
        row = {"setup": "cpu_probe", "date": time.strftime("%Y-%m-%d %H:%M"), **summary,
               "cpus": {str(c): v for c, v in result.items()}}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
