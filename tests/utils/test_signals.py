"""utils.signals.StopOnSignals: the first SIGTERM/SIGINT asks for a stop, a second one (or the grace
running out) interrupts, and the previous handlers come back."""
import os
import signal
import time

import pytest

from svreid_jax.utils.signals import StopOnSignals, StopRequested


def _deliver(signum, stop=None):
    """Send `signum` to this process and give the main thread the moment it needs to run the handler."""
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (stop is None or stop.signum is None):
        time.sleep(0.01)


def test_first_signal_asks_for_a_stop_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopOnSignals(grace_sec=60) as stop:
        stop.check()  # nothing yet
        _deliver(signal.SIGTERM, stop)
        assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(StopRequested, match="SIGTERM"):
            stop.check()
        stop.saving()
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_signal_interrupts_at_once():
    with StopOnSignals(grace_sec=60) as stop:
        _deliver(signal.SIGINT, stop)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second signal"):
            _deliver(signal.SIGTERM)


def test_a_step_that_does_not_finish_is_abandoned_after_the_grace():
    with StopOnSignals(grace_sec=0.3) as stop:
        _deliver(signal.SIGTERM, stop)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            while time.monotonic() - start < 20:  # a step that would never return to the loop
                pass
        assert 0.2 < time.monotonic() - start < 10


def test_saving_cancels_the_grace_timer():
    with StopOnSignals(grace_sec=0.2) as stop:
        _deliver(signal.SIGTERM, stop)
        stop.saving()  # the loop has reached its save: a long save must not be interrupted
        time.sleep(0.5)
