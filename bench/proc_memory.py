"""Memory figures of the running process, read from Linux's ``/proc/self/status``; shared by the memory benches."""

from __future__ import annotations


def status(field: str) -> int:
    """The figure ``field`` (``"VmRSS"``, ``"VmHWM"``, ...) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")
