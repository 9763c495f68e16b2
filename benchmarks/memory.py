"""Process memory readings shared by the benchmarks (Linux /proc; no framework imports)."""
from __future__ import annotations

import re
import resource


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so later readings cover only what follows (Linux ≥ 4.0).

    Returns False where that is not possible.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_status(field: str) -> int | None:
    """A /proc/self/status memory field (e.g. 'VmRSS', 'VmHWM') in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"{field}:\s+(\d+) kB", f.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset (VmHWM), else the process max RSS from getrusage."""
    hwm = proc_status("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
