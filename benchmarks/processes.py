"""What the memory-measuring benchmarks share: a run in a fresh process, and that process's resident memory."""

from __future__ import annotations

import multiprocessing
from pathlib import Path


def in_own_process(function, *args):
    """`function(*args)` in a fresh process (spawned, so no memory carried over from this one)."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(function, args)
    finally:
        pool.close()
        pool.join()


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts again at exec (getrusage's maxrss also counts the
    parent's peak before it)."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """This process's resident memory now."""
    return _status_mb("VmRSS")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    raise OSError(f"no {key} in /proc/self/status (Linux only)")
