"""Timing and peak-memory helpers shared by the benchmarks in ``bench/``.

Both helpers take the function to measure, ``fn``, and an optional ``setup`` whose return value
(a tuple of arguments) is passed to ``fn``; ``setup`` runs before every call and is never counted,
so a method that consumes its input (e.g. re-parametrizes modules) can be given fresh input.

* :func:`median_time` — wall-clock (``time.perf_counter``) median of ``repeats`` calls after
  ``warmup`` untimed calls; the garbage collector runs between calls, outside the timed window.
* :func:`peak_extra_memory` — the peak resident memory a call adds on top of what the process
  held just before it. On Linux the kernel's per-process high-water mark (``VmHWM``) is reset by
  writing ``5`` to ``/proc/self/clear_refs``; the call's extra memory is ``VmHWM`` after the call
  minus ``VmRSS`` just before it. Before the baseline is read, freed heap memory is handed back to
  the kernel (``gc.collect()`` + glibc ``malloc_trim(0)``) so that the call cannot silently reuse
  pages already counted in the baseline. Where ``clear_refs`` cannot be written, the call runs in a
  forked child (whose high-water mark starts at its own resident size; torch is made single-threaded
  there, as GNU OpenMP cannot run in a forked child) and ``ru_maxrss`` is read.

Resident memory counts pages actually touched, so these are what the machine really had to provide,
not what was requested from the allocator.

* :class:`OtherProcesses` — a context manager that measures how much CPU time *other* processes
  took while it was open (Linux: busy time in ``/proc/stat`` minus this process's ``os.times()``),
  so that a benchmark can say when its timings were disturbed by a busy machine.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call, their median, and the return value of the last call."""

    median_s: float
    times_s: tuple[float, ...]
    result: Any


@dataclass(frozen=True)
class MemoryPeak:
    """Bytes a call added at its peak, and still held by its return value right after it.

    ``retained_bytes`` is None when it could not be measured (forked-child fallback without /proc).
    """

    peak_bytes: int
    retained_bytes: int | None
    how: str


class OtherProcesses:
    """``with OtherProcesses() as others: ...``; then ``others.share`` is the fraction of all cores'
    time over the block that other processes used (None where ``/proc/stat`` is unavailable)."""

    cpu_s: float | None = None
    share: float | None = None

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(x) for x in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return busy, own.user + own.system, time.perf_counter()

    def __enter__(self) -> OtherProcesses:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        if self._start is None or end is None:
            return
        busy, own, wall = (b - a for a, b in zip(self._start, end))
        self.cpu_s = max(0.0, busy - own)
        self.share = self.cpu_s / (wall * (os.cpu_count() or 1))


def _no_setup() -> tuple:
    return ()


def release_memory() -> None:
    """Collect garbage and return free heap pages to the kernel (glibc only; no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def median_time(
    fn: Callable[..., Any],
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], tuple] = _no_setup,
) -> Timing:
    """Median wall-clock seconds of ``fn(*setup())`` over ``repeats`` calls after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    times = []
    result = None
    for i in range(warmup + repeats):
        result = None  # drop the previous result before building the next input
        gc.collect()
        args = setup()
        start = time.perf_counter()
        result = fn(*args)
        elapsed = time.perf_counter() - start
        del args
        if i >= warmup:
            times.append(elapsed)
    return Timing(statistics.median(times), tuple(times), result)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def _current_rss_bytes() -> int | None:
    try:
        return _status_kib("VmRSS") * 1024
    except OSError:
        return None


def _peak_in_process(fn: Callable[..., Any], args: tuple) -> MemoryPeak:
    release_memory()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    result = fn(*args)
    peak = _status_kib("VmHWM")
    release_memory()
    retained = _status_kib("VmRSS") - before
    del result
    return MemoryPeak((peak - before) * 1024, retained * 1024, "VmHWM after clear_refs")


def _peak_in_child(fn: Callable[..., Any], args: tuple) -> MemoryPeak:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its ru_maxrss starts from its resident size at fork
        code = 1
        try:
            os.close(read_end)
            if "torch" in sys.modules:  # GNU OpenMP hangs in a forked child unless single-threaded
                sys.modules["torch"].set_num_threads(1)
            release_memory()
            before = _current_rss_bytes() or _maxrss_bytes()
            result = fn(*args)
            peak = _maxrss_bytes()
            release_memory()
            after = _current_rss_bytes()
            retained = "" if after is None else str(after - before)
            del result
            os.write(write_end, f"{peak - before} {retained}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not report:
        raise RuntimeError("memory measurement in the forked child failed")
    retained = int(report[1]) if len(report) > 1 else None
    return MemoryPeak(int(report[0]), retained, "ru_maxrss in a forked, single-threaded child")


def peak_extra_memory(fn: Callable[..., Any], setup: Callable[[], tuple] = _no_setup) -> MemoryPeak:
    """Peak resident bytes that ``fn(*setup())`` adds to the process (its result included)."""
    args = setup()
    if _can_reset_peak():
        return _peak_in_process(fn, args)
    return _peak_in_child(fn, args)


def machine_line() -> str:
    """One line naming the CPU, cores, OS, Python, torch and its thread count."""
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads()={torch.get_num_threads()}"
    )


def share(others: OtherProcesses) -> str:
    """``others.share`` as a percentage, or ``unknown``."""
    return "unknown" if others.share is None else f"{others.share:.0%}"
