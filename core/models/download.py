"""Downloading a repository from Hugging Face or ModelScope, with progress, a disk check and resume.

:func:`download_repo` does it in this process: the hub client runs in a worker thread while the
calling thread measures the bytes arriving in the target folder (the same way for both hubs, partial
files included) and hands :class:`DownloadProgress` updates to a callback - a printed line on the CLI.

:class:`core.models.jobs.DownloadJob` runs the same download as a subprocess for the GUI (a
cancelled or failed download resumes next time: the hub clients skip complete files and continue
partial ones).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from core.models import hubs
from core.models.errors import DownloadFailed, HubUnreachable, InvalidModelFolder, ModelError, NotEnoughDisk
from core.models.paths import MARKER

ROOT = Path(__file__).resolve().parent.parent.parent
# Files a fine-tune never reads: other formats of the same weights, and Meta-style originals.
IGNORE_ALWAYS = ("*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel",
                 "original/*", "*.pth", "*.pt", "*.ckpt")
IGNORE_WITH_SAFETENSORS = ("*.bin",)
# Keep this much free beyond the download itself: the disk must not be filled to the last byte.
DISK_MARGIN_BYTES = 512 * 1024**2
PROGRESS_INTERVAL_S = 1.0  # how often a download reports progress
STATES = ("checking", "downloading", "verifying", "done", "failed", "cancelled")


# ----------------------------------------------------------------------------------- formatting
def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_duration(seconds: float | None) -> str:
    from core.fmt import duration

    return duration(seconds)


@dataclass
class DownloadProgress:
    """One progress report. Byte counts include what an earlier, interrupted attempt left."""

    repo_id: str
    hub: str
    state: str = "checking"
    done_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    files: int = 0
    message: str = ""
    path: str = ""
    error: str = ""
    advice: str = ""
    error_kind: str = ""  # the ModelError subclass name (HubUnreachable, NotEnoughDisk, ...), for the GUI

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def line(self) -> str:
        """The CLI's progress line."""
        where = f"[{self.hub}] {self.repo_id}"
        if self.state == "downloading":
            return (f"{where}  {fmt_bytes(self.done_bytes)} / {fmt_bytes(self.total_bytes)}  "
                    f"{100 * self.fraction:5.1f}%  {fmt_bytes(self.speed_bps)}/s  ETA {fmt_duration(self.eta_s)}")
        if self.state == "done":
            return f"{where}  done: {fmt_bytes(self.total_bytes)} in {fmt_duration(self.elapsed_s)} -> {self.path}"
        if self.state == "failed":
            return f"{where}  failed: {self.error}"
        return f"{where}  {self.message or self.state}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fraction"] = round(self.fraction, 4)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DownloadProgress:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class SpeedMeter:
    """Speed over the last ``window`` seconds, so a stall shows at once and a burst fades."""

    def __init__(self, window: float = 8.0):
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, done: int) -> float:
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[0][0] > self.window:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0


def stderr_reporter(every: float = 5.0):
    """A progress callback printing a line to stderr at most every ``every`` seconds (train.log)."""
    last = [0.0]

    def report(p: DownloadProgress) -> None:
        now = time.monotonic()
        if p.finished or p.state != "downloading" or now - last[0] >= every:
            last[0] = now
            print(p.line(), file=sys.stderr, flush=True)

    return report


# -------------------------------------------------------------------------------------- planning
def select_files(listing: hubs.RepoListing) -> tuple[list[hubs.RepoFile], list[str]]:
    """The files worth downloading, and the ignore patterns that pick them."""
    ignore = list(IGNORE_ALWAYS)
    if any(f.path.endswith(".safetensors") for f in listing.files):
        ignore += list(IGNORE_WITH_SAFETENSORS)
    keep = [f for f in listing.files if not any(fnmatch.fnmatch(f.path, pat) for pat in ignore)]
    return keep, ignore


def missing_bytes(dest: Path, files: list[hubs.RepoFile]) -> int:
    """Bytes still to fetch: files absent or of the wrong size (partial ones count in full)."""
    need = 0
    for f in files:
        target = dest / f.path
        try:
            if target.is_file() and target.stat().st_size == f.size:
                continue
        except OSError:
            pass
        need += f.size
    return need


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(dest: Path, need: int, repo_id: str) -> None:
    """Refuse, with the numbers, when ``need`` more bytes will not fit next to ``dest``."""
    if need <= 0:
        return
    where = _existing_parent(dest)
    free = shutil.disk_usage(where).free
    if need + DISK_MARGIN_BYTES > free:
        raise NotEnoughDisk(
            f"Not enough disk space for {repo_id}: it needs {fmt_bytes(need)} more (plus "
            f"{fmt_bytes(DISK_MARGIN_BYTES)} to spare), but only {fmt_bytes(free)} is free on the disk "
            f"holding {where}.",
            "Free some space, or download to a bigger disk: `--cache-dir DIR` on the command line, or "
            "set QWENTUNE_MODELS_DIR=DIR before starting QwenTune.")


def _write_marker(dest: Path, listing: hubs.RepoListing, files: list[hubs.RepoFile]) -> None:
    from core.settings import write_json_atomic

    # Names the source only: no token, no URL with credentials, no environment.
    write_json_atomic(dest / MARKER, {
        "repo_id": listing.repo_id, "hub": listing.hub, "revision": listing.revision,
        "files": len(files), "bytes": sum(f.size for f in files),
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _wrong_files(dest: Path, files: list[hubs.RepoFile]) -> list[str]:
    bad = []
    for f in files:
        target = dest / f.path
        if not target.is_file():
            bad.append(f"{f.path} (missing)")
        elif f.size and target.stat().st_size != f.size:
            bad.append(f"{f.path} ({target.stat().st_size} of {f.size} bytes)")
    return bad


def download_repo(repo_id: str, hub: str, dest: str | os.PathLike, *, progress=None, alternative: str = "",
                  interval: float | None = None) -> Path:
    """Download (or resume) ``repo_id`` from ``hub`` into ``dest`` and return ``dest``.

    ``progress(DownloadProgress)`` is called about every ``interval`` seconds. ``alternative`` is the
    command for the other hub, named in the message when this hub cannot be reached.
    """
    hubs.check_hub(hub)
    interval = PROGRESS_INTERVAL_S if interval is None else interval
    dest = Path(dest)
    started = time.monotonic()
    report = DownloadProgress(repo_id=repo_id, hub=hub)

    def emit(**changes) -> None:
        for key, value in changes.items():
            setattr(report, key, value)
        report.elapsed_s = round(time.monotonic() - started, 2)
        if progress is not None:
            progress(DownloadProgress(**asdict(report)))

    emit(state="checking", message=f"asking {hubs.HUB_NAMES[hub]} for the file list")
    try:
        if hubs.offline_mode(hub):
            raise ConnectionError("offline mode")
        try:
            hubs.probe(hub)
        except OSError as exc:
            raise HubUnreachable(
                f"Cannot reach {hubs.HUB_NAMES[hub]} ({hubs.endpoint(hub)}) to download {repo_id}: {exc}.",
                hubs.unreachable_advice(repo_id, hub, alternative)) from None
        listing = hubs.list_repo_files(repo_id, hub)
    except Exception as exc:
        error = hubs.translate_error(exc, repo_id, hub, alternative)
        emit(state="failed", error=error.reason, advice=error.advice, error_kind=type(error).__name__)
        raise error from None
    files, ignore = select_files(listing)
    if not files:
        error = DownloadFailed(f"{repo_id} on {hubs.HUB_NAMES[hub]} has no model files.")
        emit(state="failed", error=error.reason, error_kind=type(error).__name__)
        raise error
    total = sum(f.size for f in files)
    try:
        check_disk(dest, missing_bytes(dest, files), repo_id)
    except NotEnoughDisk as error:
        emit(state="failed", total_bytes=total, files=len(files), error=error.reason, advice=error.advice,
             error_kind=type(error).__name__)
        raise
    dest.mkdir(parents=True, exist_ok=True)

    box: dict = {}

    def work() -> None:
        try:
            hubs.snapshot(repo_id, hub, dest, None, ignore, listing.revision)
        except BaseException as exc:  # re-raised in the calling thread below
            box["error"] = exc

    worker = threading.Thread(target=work, daemon=True, name=f"download-{repo_id}")
    worker.start()
    meter = SpeedMeter()
    emit(state="downloading", total_bytes=total, files=len(files), path=str(dest), message="")
    while True:
        worker.join(interval)
        done = min(total, _bytes_in(dest))
        speed = meter.add(time.monotonic(), done)
        eta = (total - done) / speed if speed > 0 else None
        if not worker.is_alive():
            break
        emit(done_bytes=done, speed_bps=round(speed, 1), eta_s=None if eta is None else round(eta, 1))
    if "error" in box:
        error = hubs.translate_error(box["error"], repo_id, hub, alternative)
        emit(state="failed", done_bytes=done, error=error.reason, advice=error.advice,
             error_kind=type(error).__name__)
        raise error from None
    emit(state="verifying", done_bytes=done, message="checking the files")
    wrong = _wrong_files(dest, files)
    if wrong:
        error = DownloadFailed(f"{repo_id}: the download ended but files are wrong: {', '.join(wrong[:5])}",
                               "Run the download again; complete files are kept.")
        emit(state="failed", error=error.reason, advice=error.advice, error_kind=type(error).__name__)
        raise error
    _write_marker(dest, listing, files)
    from core.models.local import check_model_dir

    check = check_model_dir(dest)
    if not check.ok:
        error = InvalidModelFolder(str(dest), check.problems)
        emit(state="failed", done_bytes=total, error=error.reason, error_kind=type(error).__name__)
        raise error
    emit(state="done", done_bytes=total, speed_bps=0.0, eta_s=0.0, message="")
    return dest


def _bytes_in(folder: Path) -> int:
    from core.models.local import dir_size

    return dir_size(folder) if folder.is_dir() else 0


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(message, advice) for any error a download can raise."""
    if isinstance(exc, ModelError):
        return exc.reason, exc.advice
    return f"{type(exc).__name__}: {exc}", ""
