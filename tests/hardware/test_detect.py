"""GPU detection, mocked at the pynvml boundary: 0, 1 and 2 GPUs, missing driver, NVML errors."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from core.hardware.detect import NO_GPU, detect, simulated

GIB = 1 << 30


class NVMLError(Exception):
    pass


def fake_pynvml(gpus: list[dict], *, init_error: str | None = None, count_error: str | None = None,
                unsupported: tuple[str, ...] = (), broken: tuple[int, ...] = ()) -> types.ModuleType:
    """A stand-in for nvidia-ml-py. ``gpus``: name, total, used (bytes), cc, util, temp, power (mW)."""
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVML_TEMPERATURE_GPU = 0
    calls = {"init": 0, "shutdown": 0}
    m.calls = calls

    def reading(name, fn):
        def wrapper(*args):
            if name in unsupported:
                raise NVMLError("Not Supported")
            return fn(*args)
        return wrapper

    def init():
        calls["init"] += 1
        if init_error:
            raise NVMLError(init_error)

    def handle(i):
        if i in broken:
            raise NVMLError("GPU is lost")
        return i

    def count():
        if count_error:
            raise NVMLError(count_error)
        return len(gpus)

    m.nvmlInit = init
    m.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    m.nvmlDeviceGetCount = count
    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlSystemGetDriverVersion = reading("driver", lambda: "550.54.15")
    m.nvmlSystemGetCudaDriverVersion = reading("cuda", lambda: 12040)
    m.nvmlDeviceGetName = lambda h: gpus[h]["name"]
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=gpus[h]["total"], used=gpus[h]["used"],
                                                          free=gpus[h]["total"] - gpus[h]["used"])
    m.nvmlDeviceGetCudaComputeCapability = reading("cc", lambda h: gpus[h]["cc"])
    m.nvmlDeviceGetUtilizationRates = reading("util", lambda h: SimpleNamespace(gpu=gpus[h]["util"], memory=7))
    m.nvmlDeviceGetTemperature = reading("temp", lambda h, sensor: gpus[h]["temp"])
    m.nvmlDeviceGetPowerUsage = reading("power", lambda h: gpus[h]["power"])
    m.nvmlDeviceGetEnforcedPowerLimit = reading("power", lambda h: 450_000)
    m.nvmlDeviceGetUUID = reading("uuid", lambda h: f"GPU-{h}")
    return m


RTX3060 = {"name": "NVIDIA GeForce RTX 3060", "total": 12 * GIB, "used": GIB // 2, "cc": (8, 6), "util": 3,
           "temp": 41, "power": 17_500}
T4 = {"name": b"Tesla T4", "total": 15 * GIB, "used": 0, "cc": (7, 5), "util": 0, "temp": 35, "power": 9_000}
H100 = {"name": "NVIDIA H100 80GB HBM3", "total": 80 * GIB, "used": 4 * GIB, "cc": (9, 0), "util": 97,
        "temp": 66, "power": 650_000}


@pytest.fixture
def use(monkeypatch):
    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module
    return install


def test_no_gpu_devices(use):
    nvml = use(fake_pynvml([]))
    report = detect()
    assert report.gpus == [] and not report.has_gpu
    assert report.message.startswith(NO_GPU)
    assert nvml.calls["shutdown"] == 1


def test_one_gpu(use, tmp_path):
    use(fake_pynvml([RTX3060]))
    report = detect(tmp_path)
    assert len(report.gpus) == 1
    g = report.gpus[0]
    assert (g.name, g.total_gib, g.used_gib, g.free_gib) == ("NVIDIA GeForce RTX 3060", 12.0, 0.5, 11.5)
    assert (g.compute_capability, g.bf16) == ("8.6", True)
    assert (g.utilization_pct, g.temperature_c, g.power_w, g.power_limit_w) == (3, 41, 17.5, 450.0)
    assert (report.driver_version, report.cuda_version) == ("550.54.15", "12.4")
    assert report.message == ""
    assert report.ram_total_gib and report.ram_total_gib > 0
    assert report.disk_free_gib is not None and report.disk_path == str(tmp_path)
    assert report.to_dict()["gpus"][0]["name"] == g.name and report.to_dict()["has_gpu"]


def test_two_gpus_and_bytes_names(use):
    use(fake_pynvml([T4, H100]))
    report = detect()
    assert [g.name for g in report.gpus] == ["Tesla T4", "NVIDIA H100 80GB HBM3"]
    assert [g.index for g in report.gpus] == [0, 1]
    assert [g.bf16 for g in report.gpus] == [False, True]  # Turing has no bf16


def test_unsupported_readings_are_none(use):
    use(fake_pynvml([RTX3060], unsupported=("power", "temp", "util", "cc", "driver", "cuda", "uuid")))
    g = detect().gpus[0]
    assert (g.power_w, g.temperature_c, g.utilization_pct, g.compute_capability) == (None, None, None, None)
    assert g.bf16 is False and g.total_gib == 12.0


def test_driver_missing(use):
    use(fake_pynvml([RTX3060], init_error="NVML Shared Library Not Found"))
    report = detect()
    assert not report.gpus
    assert report.message.startswith(NO_GPU) and "Shared Library Not Found" in report.message


def test_nvml_error_mid_way(use):
    nvml = use(fake_pynvml([RTX3060], count_error="Unknown Error"))
    report = detect()
    assert not report.gpus and "Unknown Error" in report.message
    assert nvml.calls["shutdown"] == 1


def test_one_broken_gpu_keeps_the_others(use):
    use(fake_pynvml([RTX3060, H100], broken=(0,)))
    report = detect()
    assert [g.name for g in report.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert "GPU 0" in report.message and "lost" in report.message


def test_broken_binding_is_reported_not_raised(use):
    nvml = use(fake_pynvml([RTX3060]))
    del nvml.nvmlDeviceGetMemoryInfo  # an nvidia-ml-py without the function
    report = detect()
    assert not report.gpus and "AttributeError" in report.message


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    report = detect()
    assert not report.gpus and "not installed" in report.message


def test_this_machine_never_raises():
    report = detect()  # the real NVML: on a CPU box this is the no-GPU report
    assert report.has_gpu or report.message.startswith(NO_GPU)


def test_simulated_cards():
    report = simulated(24, count=2)
    assert [g.total_gib for g in report.gpus] == [24.0, 24.0] and report.simulated
    with pytest.raises(ValueError):
        simulated(0)
