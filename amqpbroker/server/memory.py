"""The memory alarm's inputs: the broker process's resident memory and the configured watermark.

``memory_high_watermark`` is a fraction of the machine's memory when it is at most 1 (RabbitMQ's
``vm_memory_high_watermark.relative``, default 0.4), a number of bytes when it is larger
(``.absolute``), and 0 turns the alarm off.
"""

from __future__ import annotations

import os

__all__ = ["resident_bytes", "watermark_bytes", "open_fds", "max_fds"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident memory, or None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def open_fds() -> int | None:
    """File descriptors this process has open (sockets included), or None without /proc."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def max_fds() -> int | None:
    """The soft limit on this process's open files."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def watermark_bytes(setting: float) -> int | None:
    """The watermark in bytes, or None when the alarm is off (0, or total memory unknown)."""
    if setting <= 0:
        return None
    if setting > 1:
        return int(setting)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return int(total * setting)
