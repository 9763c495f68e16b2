"""Child processes of the tests: each starts in a process group of its own, and the whole group is killed
when the child runs past its timeout, when the test is interrupted (pytest-timeout, Ctrl-C), and in any
case when the test ends (tests/conftest.py), so that no test leaves a process running behind it, nor the
processes its child started (the command line's, a notebook kernel's).

    run(cmd, timeout=…, **kwargs)   subprocess.run's arguments and result
    popen(cmd, **kwargs)             a subprocess.Popen; the test may wait for it, or leave it to the end
"""
from __future__ import annotations

import os
import signal
import subprocess

_started: list[subprocess.Popen] = []


def popen(cmd, **kwargs) -> subprocess.Popen:
    """subprocess.Popen(cmd, **kwargs) in a new session (its own process group), killed with its group
    when the test ends (kill_all)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _started.append(proc)
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL proc's process group (proc and whatever it started that is still in the group), close
    proc's pipes and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone: nothing left to kill
        pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    proc.wait()


def run(cmd, *, timeout: float, input=None, capture_output: bool = False, check: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, timeout=…, …): on TimeoutExpired (or any exception while waiting) the child's
    whole process group is killed before the exception propagates; the group is killed after a
    normal exit too (a grandchild the child left behind)."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = popen(cmd, **kwargs)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    finally:
        kill(proc)
        _started.remove(proc)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def kill_all() -> None:
    """Kill every process group started through this module since the last call (the end of a test)."""
    while _started:
        kill(_started.pop())
