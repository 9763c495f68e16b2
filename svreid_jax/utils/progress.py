"""Progress reporting for long loops: steps/s, elapsed time and ETA."""
from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Tracks throughput over the steps since the last report (so compile time does not skew it)."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self._start_time = time.perf_counter()
        self._last_time = self._start_time
        self._last_step = start_step

    def report(self, step: int) -> dict[str, float]:
        """Returns {'steps_per_sec', 'elapsed_sec', 'eta_sec'} measured since the previous report."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        return {"steps_per_sec": rate, "elapsed_sec": now - self._start_time, "eta_sec": eta}

    def line(self, step: int) -> str:
        r = self.report(step)
        eta = format_duration(r["eta_sec"]) if r["eta_sec"] != float("inf") else "?"
        pct = 100.0 * step / max(self.total_steps, 1)
        return (f"step {step}/{self.total_steps} ({pct:.0f}%), {r['steps_per_sec']:.2f} steps/s, "
                f"elapsed {format_duration(r['elapsed_sec'])}, ETA {eta}")
