"""This process's memory as Linux reports it: /proc/self/status fields, the peak-RSS reset, heap trimming
(benchmarks/scale.py and benchmarks/serving.py measure peaks with them)."""

from __future__ import annotations

import ctypes


def status_kb(field: str) -> int:
    """A /proc/self/status field in kB (VmRSS, VmHWM, RssAnon, ...)."""
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith(field + ":")).split()[1])


def trim_heap() -> None:
    """Give free malloc pages back to the OS (glibc), so a measured phase cannot reuse them unmeasured."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False
