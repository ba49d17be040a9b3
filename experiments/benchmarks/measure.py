"""What the benchmarks share: the optimizer they time, step statistics, process memory and
time since start (Linux ``/proc``)."""

from __future__ import annotations

import os
import statistics

WEIGHT_DECAY, MOMENTUM, LEARNING_RATE = 5e-4, 0.9, 0.1


def timing(times: list[float]) -> dict[str, float]:
    """Median and best of per-step seconds."""
    return {"median_s": statistics.median(times), "best_s": min(times)}


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM of this process (the peak resident set since start or the last reset)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:  # field 22, after the parenthesised command name
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
