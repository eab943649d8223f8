"""What the GPU was doing around a case's timed rounds: clocks, temperature, power, utilisation and
clock-event (throttle) reasons, read through NVML (`nvidia-ml-py`, imported as pynvml).

    reading = telemetry.read_device(device)   # a torch.device: before the timed rounds, and again after them

Never call it inside a timed round: an NVML query takes tens of microseconds to milliseconds of host
time. It returns None where there is no NVML (no driver, no GPU, the CPU), and never raises.

A reading made up for a test, or read back from a fixture of NVML's values, says so: source
"recorded" (from_nvml_values), against "nvml" for one read from a device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cosmos3.errors import InputError

SOURCES = ("nvml", "recorded")
# NVML's clock-event reason bits (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*).
REASON_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
# The reasons that slow a busy GPU down; idle, sync boost, application clocks and display are not throttling.
THROTTLE_REASONS = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                              "hw_power_brake_slowdown"})
# A regression whose sides' (or baseline's) SM clocks differ by more than this is flagged in its verdict.
SM_CLOCK_LIMIT = 0.05


@dataclass(frozen=True)
class GpuReading:
    """One NVML reading of one device."""

    source: str  # "nvml" (read from a device) | "recorded" (a fixture or test values)
    device_index: int
    sm_clock_mhz: int
    mem_clock_mhz: int
    temperature_c: int
    power_w: float
    gpu_util_percent: int
    mem_util_percent: int
    clock_event_reasons_mask: int  # nvmlDeviceGetCurrentClocksEventReasons, raw bits

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError("source", f"must be one of {', '.join(SOURCES)}", self.source)
        for name in ("sm_clock_mhz", "mem_clock_mhz", "gpu_util_percent", "mem_util_percent",
                     "clock_event_reasons_mask", "device_index"):
            if getattr(self, name) < 0:
                raise InputError(name, "must be >= 0", getattr(self, name))

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(name for name, bit in REASON_BITS.items() if self.clock_event_reasons_mask & bit)

    @property
    def throttled(self) -> tuple[str, ...]:
        """The active reasons that throttle a busy GPU (power cap, thermal, hardware slowdown)."""
        return tuple(r for r in self.reasons if r in THROTTLE_REASONS)


def from_nvml_values(values: Mapping[str, Any], *, source: str = "recorded") -> GpuReading:
    """A reading from values shaped as NVML returns them: clocks in MHz, temperature in C, power in mW,
    utilisation as {"gpu": %, "memory": %}, the clock-event reasons as a bit mask."""
    try:
        return GpuReading(
            source=source, device_index=int(values.get("index", 0)),
            sm_clock_mhz=int(values["clock_sm"]), mem_clock_mhz=int(values["clock_mem"]),
            temperature_c=int(values["temperature"]), power_w=float(values["power_usage"]) / 1e3,
            gpu_util_percent=int(values["utilization"]["gpu"]), mem_util_percent=int(values["utilization"]["memory"]),
            clock_event_reasons_mask=int(values["clocks_event_reasons"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("nvml values", f"must hold NVML's fields ({exc!r})") from None


def _event_reasons(pynvml: Any, handle: Any) -> int:
    getter = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons  # the older name, in nvidia-ml-py < 12.535
    return int(getter(handle))


def read_gpu(device_index: int = 0) -> GpuReading | None:
    """Read device `device_index` through NVML; None where NVML or the device is not there. Call it
    before and after a case's timed rounds, never inside one."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- NVMLError_LibraryNotFound, DriverNotLoaded...: no GPU to read
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return from_nvml_values({
            "index": device_index,
            "clock_sm": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "clock_mem": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "temperature": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "power_usage": pynvml.nvmlDeviceGetPowerUsage(handle),
            "utilization": {"gpu": util.gpu, "memory": util.memory},
            "clocks_event_reasons": _event_reasons(pynvml, handle),
        }, source="nvml")
    except Exception:  # noqa: BLE001 -- a query the device does not support: no reading rather than a failed case
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001,S110
            pass


def read_device(device: Any) -> GpuReading | None:
    """read_gpu for a torch.device: None for the CPU (or any non-CUDA device). NVML numbers devices as the
    driver does; with CUDA_VISIBLE_DEVICES set, CUDA's index may name another, so that is read instead."""
    if getattr(device, "type", None) != "cuda":
        return None
    index = device.index if device.index is not None else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if visible and visible[0].strip() and index < len(visible) and visible[index].strip().isdigit():
        index = int(visible[index].strip())
    return read_gpu(index)


def case_readings(case: Any) -> list[GpuReading]:
    """A CaseResult's readings (before and after its timed rounds), those it has."""
    return [r for r in (case.gpu_before, case.gpu_after) if r is not None]


def sm_clock_note(readings_a: list[GpuReading], readings_b: list[GpuReading], limit: float = SM_CLOCK_LIMIT,
                  names: tuple[str, str] = ("head", "base")) -> str | None:
    """Why a timing of side a against side b may be the GPU's doing rather than the code's: their mean SM
    clocks differ by more than `limit`, or either side was throttled. None where neither, or no readings."""
    problems = []
    if readings_a and readings_b:
        a = sum(r.sm_clock_mhz for r in readings_a) / len(readings_a)
        b = sum(r.sm_clock_mhz for r in readings_b) / len(readings_b)
        if max(a, b) > 0 and abs(a - b) / max(a, b) > limit:
            problems.append(f"SM clocks differ by {abs(a - b) / max(a, b):.1%} ({names[0]} {a:.0f} MHz, "
                            f"{names[1]} {b:.0f} MHz) > {limit:.0%}")
    for side, readings in zip(names, (readings_a, readings_b), strict=True):
        reasons = sorted({t for r in readings for t in r.throttled})
        if reasons:
            problems.append(f"the {side} was throttled ({', '.join(reasons)})")
    return "; ".join(problems) if problems else None
