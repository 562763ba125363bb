"""The worker's exit codes and its train.log line, shared by the worker, the ranks of a ddp / fsdp run
and their launcher parent (a leaf: it imports only the launch plan's rank test)."""

from __future__ import annotations

import time

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_OOM, EXIT_STOPPED = 0, 1, 2, 3, 0
# Exit codes by error kind: a setting, the data or the model must change (2), or running again can help (1).
EXIT_BY_KIND = {"config": EXIT_CONFIG, "data": EXIT_CONFIG, "model": EXIT_CONFIG}


def failure_exit(oom: bool, kind: str | None) -> int:
    """The exit code of a failed run: out of memory, else by its error kind."""
    return EXIT_OOM if oom else EXIT_BY_KIND.get(kind or "", EXIT_FAILED)


def log(msg: str) -> None:
    """A line of train.log. Under ddp / fsdp only rank 0 speaks (the others would repeat it)."""
    from core.train.launch import writes_run_folder

    if writes_run_folder():
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
