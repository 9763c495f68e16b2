"""SIGTERM and SIGINT as a request to stop at the next step boundary, within a bounded time.

SLURM, Kubernetes and preemptible VMs stop a job with SIGTERM and kill it some seconds later
(often 30). Python's default for SIGTERM is to die on the spot, losing everything since the last
scheduled checkpoint. Inside `StopOnSignals` the first SIGTERM or SIGINT only sets `signum`; the
training loop checks it between steps and saves. If the loop has not stopped `grace_sec` after the
signal (a step still compiling, an evaluation in progress), the main thread gets a KeyboardInterrupt,
which the loop's interrupt path also saves from. A second signal interrupts at once. Inside
`protected()` (the final checkpoint being written) the grace period does not run: it starts when the
section ends, so the save is complete before anything interrupts the run.
"""
from __future__ import annotations

import _thread
import contextlib
import signal
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised by the loop at a step boundary after a signal."""


class StopOnSignals:
    """Context manager; handlers are installed only in the main thread (elsewhere signals cannot be
    caught), and the previous ones are put back on exit."""

    def __init__(self, grace_sec: float):
        self.grace_sec = float(grace_sec)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._timer: threading.Timer | None = None
        self._active = False
        self._protected = 0  # depth of protected() sections

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name})")
        self.signum = signum
        logging.warning("%s received: saving a checkpoint after the current step, then stopping "
                        "(at most %.0f s for the step in flight; a second signal stops at once)",
                        self.name, self.grace_sec)
        if not self._protected:
            self._start_timer()

    def _start_timer(self) -> None:
        self._timer = threading.Timer(self.grace_sec, self._abandon)
        self._timer.daemon = True
        self._timer.start()

    def _abandon(self) -> None:
        if self._active:
            logging.warning("the step in flight did not finish within %.0f s of %s: abandoning it",
                            self.grace_sec, self.name)
            # Delivered like a second SIGINT: _handle raises KeyboardInterrupt in the main thread.
            _thread.interrupt_main(signal.SIGINT)

    def saving(self) -> None:
        """The loop is saving: the grace timer must not interrupt the save (a second signal still does)."""
        if self._timer is not None:
            self._timer.cancel()

    @contextlib.contextmanager
    def protected(self):
        """A section the grace timer must not interrupt (a checkpoint being written and waited for): a
        signal before or inside it has its grace period (re)started when the section ends. A second
        signal still interrupts at once."""
        self._protected += 1
        if self._timer is not None:
            self._timer.cancel()
        try:
            yield
        finally:
            self._protected -= 1
            if not self._protected and self.signum is not None and self._active:
                self._start_timer()

    def check(self) -> None:
        """Raise StopRequested if a signal has arrived (the loop calls this between steps)."""
        if self.signum is not None:
            raise StopRequested(self.name)
