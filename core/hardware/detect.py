"""What hardware is there: NVIDIA GPUs through NVML (nvidia-ml-py), CPU RAM and free disk.

:func:`detect` never raises: no driver, no GPU or an NVML error gives a report with no GPUs and a
``message`` that says so ("no NVIDIA GPU found: CPU demo mode only"), so the GUI can always show
something. A reading a card does not support (power on some laptops, temperature in some VMs)
is None, not an error.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field

GIB = float(1 << 30)
NO_GPU = "no NVIDIA GPU found: CPU demo mode only"


@dataclass
class GpuInfo:
    index: int
    name: str
    total_gib: float
    free_gib: float
    used_gib: float
    compute_capability: str | None = None  # "8.9"
    bf16: bool = False  # Ampere (8.0) and newer
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    uuid: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HardwareReport:
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports, e.g. "12.4"
    ram_total_gib: float | None = None
    ram_available_gib: float | None = None
    disk_free_gib: float | None = None
    disk_path: str = "."
    message: str = ""  # why there are no GPUs, or a partial failure worth showing
    simulated: bool = False

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["has_gpu"] = self.has_gpu
        return out


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _try(fn, *args):
    """One NVML reading; a card that does not support it (or fails on it) gives None."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _gpu(pynvml, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    cc = _try(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    util = _try(pynvml.nvmlDeviceGetUtilizationRates, handle)
    temp = _try(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
    power = _try(pynvml.nvmlDeviceGetPowerUsage, handle)
    limit = _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    uuid = _try(pynvml.nvmlDeviceGetUUID, handle)
    return GpuInfo(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        total_gib=round(mem.total / GIB, 2),
        free_gib=round(mem.free / GIB, 2),
        used_gib=round(mem.used / GIB, 2),
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        bf16=bool(cc and cc[0] >= 8),
        utilization_pct=int(util.gpu) if util is not None else None,
        memory_utilization_pct=int(util.memory) if util is not None else None,
        temperature_c=int(temp) if temp is not None else None,
        power_w=round(power / 1000.0, 1) if power is not None else None,
        power_limit_w=round(limit / 1000.0, 1) if limit is not None else None,
        uuid=_text(uuid) if uuid is not None else None,
    )


def detect_gpus(report: HardwareReport) -> None:
    """Fill ``report`` with NVML's view; on failure leave it GPU-less with a message."""
    try:
        import pynvml
    except ImportError:
        report.message = f"{NO_GPU} (nvidia-ml-py is not installed)"
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        report.message = f"{NO_GPU} (NVIDIA driver not available: {exc})"
        return
    except OSError as exc:  # a broken libnvidia-ml can fail to load
        report.message = f"{NO_GPU} (NVML could not be loaded: {exc})"
        return
    try:
        driver = _try(pynvml.nvmlSystemGetDriverVersion)
        report.driver_version = _text(driver) if driver is not None else None
        cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion)
        if cuda:
            report.cuda_version = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        count = pynvml.nvmlDeviceGetCount()
        failures = []
        for i in range(count):
            try:
                report.gpus.append(_gpu(pynvml, i))
            except pynvml.NVMLError as exc:
                failures.append(f"GPU {i}: {exc}")
        if failures:
            report.message = "some GPUs could not be read: " + "; ".join(failures)
        if not report.gpus and not failures:
            report.message = f"{NO_GPU} (the driver reports no devices)"
        elif not report.gpus:
            report.message = f"{NO_GPU} ({'; '.join(failures)})"
    except pynvml.NVMLError as exc:
        report.gpus = []
        report.message = f"{NO_GPU} (NVML error: {exc})"
    except Exception as exc:  # an old or broken nvidia-ml-py (missing function, odd value): say so
        report.gpus = []
        report.message = f"{NO_GPU} (unexpected NVML failure: {type(exc).__name__}: {exc})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            # Readings are already taken; a failed shutdown only matters for the log.
            report.message = report.message or f"NVML shutdown failed: {exc}"


def _ram() -> tuple[float | None, float | None]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return round(vm.total / GIB, 2), round(vm.available / GIB, 2)
    except ImportError:
        pass
    try:
        info = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        return round(info["MemTotal"] / GIB, 2), round(info.get("MemAvailable", 0) / GIB, 2)
    except (OSError, KeyError, ValueError, IndexError):
        return None, None


def detect(disk_path: str | os.PathLike = ".") -> HardwareReport:
    """GPUs, RAM and free disk where runs and models are stored. Never raises."""
    report = HardwareReport(disk_path=str(disk_path))
    detect_gpus(report)
    report.ram_total_gib, report.ram_available_gib = _ram()
    try:
        report.disk_free_gib = round(shutil.disk_usage(disk_path).free / GIB, 1)
    except OSError:
        report.disk_free_gib = None
    return report


def simulated(vram_gb: float, count: int = 1, name: str | None = None) -> HardwareReport:
    """A report for a card the user does not have (``--vram-gb``); RAM and disk are real."""
    if not vram_gb or vram_gb <= 0:
        raise ValueError(f"--vram-gb must be a positive number, got {vram_gb!r}")
    report = HardwareReport()
    report.gpus = [GpuInfo(index=i, name=name or f"simulated {vram_gb:g} GB GPU", total_gib=float(vram_gb),
                           free_gib=float(vram_gb), used_gib=0.0, compute_capability=None, bf16=True)
                   for i in range(count)]
    report.ram_total_gib, report.ram_available_gib = _ram()
    try:
        report.disk_free_gib = round(shutil.disk_usage(".").free / GIB, 1)
    except OSError:
        report.disk_free_gib = None
    report.simulated = True
    report.message = "simulated card (--vram-gb): no GPU readings"
    return report
