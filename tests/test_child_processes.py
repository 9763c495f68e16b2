"""tests/child_processes.py: a child that runs past its timeout goes with everything it started, and so does
one a test leaves running."""
import os
import subprocess
import time

import pytest

import child_processes

# Starts a grandchild, writes its pid, and waits for it: both would run for five minutes.
SCRIPT = 'sleep 300 & echo $! > "$1"; wait'


def _gone(pid, within=10.0):
    """Whether `pid` has exited (a zombie no one reaped counts as exited) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _grandchild(path):
    for _ in range(200):
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the child never wrote its grandchild's pid")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_timeout_kills_the_child_and_what_it_started(tmp_path):
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        child_processes.run(["bash", "-c", SCRIPT, "bash", str(tmp_path / "pid")], timeout=2, capture_output=True)
    assert time.monotonic() - started < 30  # not left to wait for the grandchild's five minutes
    assert _gone(_grandchild(tmp_path / "pid"))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_process_left_running_is_killed_at_the_end_of_the_test(tmp_path):
    proc = child_processes.popen(["bash", "-c", SCRIPT, "bash", str(tmp_path / "pid")])
    grandchild = _grandchild(tmp_path / "pid")
    assert proc.poll() is None and not _gone(grandchild, within=0.2)
    child_processes.kill_all()  # what tests/conftest.py does after every test
    assert proc.returncode is not None and _gone(grandchild)


def test_run_returns_what_subprocess_run_returns():
    done = child_processes.run(["bash", "-c", 'read x; echo "got $x"; echo oops >&2; exit 3'], input="it\n",
                               capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "got it\n", "oops\n")
    with pytest.raises(subprocess.CalledProcessError):
        child_processes.run(["false"], timeout=30, check=True)
