"""Start-up speed: seconds from `python launch.py` to the first HTTP 200 of the page.

    .venv/bin/python bench/startup.py [--runs 3] [--lang en] [--record]

Starts the app (demo mode, empty temporary runs/mixes folders) several times and reports the time
until http://127.0.0.1:PORT/ (redirected to /<lang>/) answers 200. Target: under 10 s on a 2-core
machine. --record appends the result to bench/results/startup.jsonl with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(lang: str, timeout: float = 120.0) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "launch.py", "--demo", "--port", str(port), "--lang", lang,
                                 "--runs-dir", f"{tmp}/runs", "--mixes-dir", f"{tmp}/mixes"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                        if resp.status == 200 and b"QwenTune" in resp.read():
                            return time.perf_counter() - t0
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"launch.py exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"no answer within {timeout} s")
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="Number of starts to time.")
    p.add_argument("--lang", default="en", choices=["en", "zh"])
    p.add_argument("--record", action="store_true", help="Append the result to bench/results/startup.jsonl.")
    args = p.parse_args(argv)
    one_start(args.lang)  # warm the OS file cache: the first start after a reboot is not the usual one
    load_before = os.getloadavg()[0]
    times = [one_start(args.lang) for _ in range(args.runs)]
    result = {
        "bench": "startup", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
        "max_s": round(max(times), 2), "target_s": TARGET_S, "cpus": os.cpu_count(), "cpu": cpu_name(),
        "python": platform.python_version(), "lang": args.lang,
        # Other work on the machine slows start-up; the 1-minute load average says how busy it was.
        "load_avg_1m": round(load_before, 2),
    }
    print(json.dumps(result))
    if args.record:
        out = ROOT / "bench" / "results" / "startup.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    return 0 if result["max_s"] <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
