"""The cores and memory this process may use: the machine's, capped by its affinity and cgroup v2 limits.

Both ends use them: a client reports them to the server in its Join
capabilities, and the server gives update decoding one thread per usable
core.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """Cores this process may use: affinity, capped by a cgroup v2 CPU quota (docker --cpus)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = (CGROUP / "cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def usable_memory() -> int:
    """Physical memory, capped by a cgroup v2 memory limit (docker mem_limit)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total
