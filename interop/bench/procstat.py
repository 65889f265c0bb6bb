"""From /proc (Linux): a process's CPU seconds and resident memory, and the owner of a listening port."""

from __future__ import annotations

import ipaddress
import os

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


def cpu_seconds(pid: int | None) -> float | None:
    """user + system CPU seconds of ``pid`` (all its threads), or None when unreadable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kb(pid: int | None) -> int | None:
    """Resident memory of ``pid`` in KB (``VmRSS`` of /proc/PID/status), or None when unreadable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def system_cpu() -> dict[str, float] | None:
    """Machine-wide CPU seconds so far from /proc/stat: busy, idle (incl. iowait) and steal."""
    try:
        with open("/proc/stat") as f:
            cols = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    cols += [0] * (8 - len(cols))
    user, nice, system, idle, iowait, irq, softirq, steal = cols[:8]
    return {"busy": (user + nice + system + irq + softirq) / _TICK, "idle": (idle + iowait) / _TICK,
            "steal": steal / _TICK}


def listener_pid(host: str, port: int) -> int | None:
    """The pid owning the TCP socket listening on ``port`` on this machine, if we can see it.

    Only for local hosts; looks the socket inode up in /proc/net/tcp{,6} and then in
    /proc/*/fd (which needs permission to read the other process's fds)."""
    if host not in _LOCAL:
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except (OSError, StopIteration):
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") in targets:
                        return int(entry)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def process_name(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None
