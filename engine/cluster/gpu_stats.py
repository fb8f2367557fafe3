"""GPU busy and memory from NVML, read per GPU so that one GPU NVML cannot read (fallen off the
bus, reset, or a MIG slice without utilisation counters) hides no other and fails nothing.

`read_gpus` is what /metrics serves (api.server.metrics); `GpuSampler` samples it in the background
during a job so a job can report how busy its GPUs were (benchmarks/gpu_smoke.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one moment. `up` False: NVML could not read it, and the figures are None;
    `busy_percent` None alone: the GPU has no utilisation counter (MIG), memory still read."""

    index: int
    up: bool
    busy_percent: float | None = None  # share of the last sample period a kernel ran
    memory_used: int | None = None
    memory_total: int | None = None


def read_gpus() -> list[GpuReading]:
    """Every GPU NVML sees, read now; [] where pynvml, the driver or a GPU is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except Exception:
            log.debug("NVML could not count the GPUs", exc_info=True)
            return []
        return [_read_one(pynvml, i) for i in range(count)]
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # a reading never fails for NVML's sake
            log.debug("nvmlShutdown failed", exc_info=True)


def _read_one(pynvml, index: int) -> GpuReading:
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:
        log.debug("NVML could not read GPU %d", index, exc_info=True)
        return GpuReading(index, False)
    try:
        busy = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # NVML_ERROR_NOT_SUPPORTED on MIG: memory still counts
        log.debug("NVML has no utilisation for GPU %d", index, exc_info=True)
        busy = None
    return GpuReading(index, True, busy, int(memory.used), int(memory.total))


class GpuSampler:
    """Reads the GPUs every `interval` seconds on a daemon thread, between start() and stop();
    then `busy_percent()` is each GPU's mean busy and `peak_memory()` its highest use."""

    def __init__(self, interval: float = 0.2, read=read_gpus) -> None:
        self.interval, self._read = interval, read
        self.samples: list[list[GpuReading]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuSampler:
        self._thread = threading.Thread(
            target=self._run, name="embedscale-gpu-sampler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> GpuSampler:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            self.samples.append(self._read())
            if self._stop.wait(self.interval):
                return

    def busy_percent(self) -> dict[int, float]:
        """Mean busy per GPU over the samples that had a figure."""
        seen: dict[int, list[float]] = {}
        for sample in self.samples:
            for g in sample:
                if g.busy_percent is not None:
                    seen.setdefault(g.index, []).append(g.busy_percent)
        return {i: round(sum(v) / len(v), 1) for i, v in seen.items()}

    def peak_memory(self) -> dict[int, int]:
        """Highest memory in use per GPU over the samples."""
        peak: dict[int, int] = {}
        for sample in self.samples:
            for g in sample:
                if g.memory_used is not None:
                    peak[g.index] = max(peak.get(g.index, 0), g.memory_used)
        return peak

    def unreadable(self) -> list[int]:
        """GPUs NVML failed to read at least once."""
        return sorted({g.index for sample in self.samples for g in sample if not g.up})


# --- the GPU of this worker process -----------------------------------------------------------


def nvml_device(device: str) -> int | str:
    """NVML's name for torch's `device` in this process: the index or UUID that
    CUDA_VISIBLE_DEVICES lists at torch's ordinal (dask-cuda lists the worker's own GPU
    first), else the ordinal itself."""
    ordinal = int(device.split(":")[1]) if ":" in device else 0
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    if ordinal < len(visible):
        entry = visible[ordinal]
        return int(entry) if entry.isdigit() else entry
    return ordinal


class DeviceBusy:
    """Busy % of one GPU, sampled every `interval` seconds on a daemon thread for the life of
    the process (started at first use); a partition asks for the mean over its own run."""

    def __init__(self, device: int | str, interval: float = 0.2, read=None) -> None:
        self.interval = interval
        self._read = read or _nvml_busy_reader(device)
        self.samples: deque[tuple[float, float]] = deque(maxlen=20_000)  # (perf_counter, %)
        self._thread = threading.Thread(target=self._run, name="embedscale-gpu-busy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            busy = self._read()
            if busy is not None:
                self.samples.append((time.perf_counter(), busy))
            time.sleep(self.interval)

    def mean_since(self, since: float) -> float | None:
        """Mean busy % of the samples taken since `since` (a time.perf_counter value); None
        without any (NVML unreadable, or too short a stretch)."""
        values = [busy for at, busy in list(self.samples) if at >= since]
        return round(sum(values) / len(values), 1) if values else None


def _nvml_busy_reader(device: int | str):
    try:
        import pynvml

        pynvml.nvmlInit()  # kept initialised for the process's sampler
        handle = (
            pynvml.nvmlDeviceGetHandleByIndex(device)
            if isinstance(device, int)
            else pynvml.nvmlDeviceGetHandleByUUID(device)
        )
    except Exception:
        log.debug("NVML cannot read GPU %s: no busy figures", device, exc_info=True)
        return lambda: None

    def read() -> float | None:
        try:
            return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # not supported (MIG) or the GPU is gone: no figure
            return None

    return read


_samplers: dict[str, DeviceBusy] = {}
_samplers_lock = threading.Lock()


def watch_gpu(device: str) -> DeviceBusy | None:
    """The busy sampler of this process's GPU `device`, started on first call (a partition
    calls it as it starts); None on the CPU."""
    if not device.startswith("cuda"):
        return None
    with _samplers_lock:
        sampler = _samplers.get(device)
        if sampler is None:
            sampler = _samplers[device] = DeviceBusy(nvml_device(device))
        return sampler


def gpu_busy_since(device: str, since: float) -> float | None:
    """This process's GPU `device` busy % since `since` (perf_counter); None on the CPU."""
    sampler = watch_gpu(device)
    return sampler.mean_since(since) if sampler is not None else None


def gpu_peak_bytes(device: str) -> int | None:
    """The most memory torch has held on `device` in this process; None on the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(torch.device(device)))
