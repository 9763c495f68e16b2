"""Multi-host data parallelism on localhost: two processes (gloo CPU collectives), each reading its own
shard of the data through the grain pipeline, end with the parameters of a single-process run on the
same global batches (tests/multihost_script.py does the work)."""
import contextlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import demo
from svreid_jax.data import demo as demo_data

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "multihost_script.py")
TIMEOUT_S = 240


@contextlib.contextmanager
def _reserved_port():
    """A port nobody else can take while the test runs: the socket stays bound, with SO_REUSEPORT, which
    lets the coordinator's gRPC server (which sets it too) bind the same port, and nothing else. Picking
    a free port and closing it before the coordinator starts would leave a window for another process."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::", 0))  # the coordinator listens on [::]:port
        yield s.getsockname()[1]


@pytest.mark.slow
# Not strict: the defect shows on one CPU and not on another. On the Intel Xeon (AVX-512) KVM guest the
# test fails; on an AMD EPYC guest, with the same pinned set, the runs agree and it passes. A strict mark
# would turn CI red on whichever CPU its machine happens to have.
@pytest.mark.xfail(strict=False, reason=(
    "known defect, open: on some CPUs (an Intel Xeon with AVX-512) the two-process run's parameters differ "
    "from the single-process run's (BN biases by up to 7% after 3 steps); with augment.erasing_probability=0 "
    "they agree there, so random erasing is the suspect. The code before the loop refactor (d0f0ffe) fails "
    "the same way there. On an AMD EPYC the runs agree (XPASS)"))
def test_two_processes_match_single_process(tmp_path):
    config = demo.get_config("source_only,micro")
    demo_data.ensure(str(tmp_path / "data"), **config.data.demo_options.to_dict())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    runs = {name: (pid, count) for name, pid, count in [("p0", 0, 2), ("p1", 1, 2), ("single", 0, 1)]}
    outputs = {}
    with _reserved_port() as port:
        procs = {name: subprocess.Popen([sys.executable, SCRIPT, str(pid), str(count), str(port),
                                         str(tmp_path / "data"), str(tmp_path / f"{name}.npz")],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for name, (pid, count) in runs.items()}
        try:
            for name, proc in procs.items():
                outputs[name] = proc.communicate(timeout=TIMEOUT_S)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{outputs[name][1][-4000:]}"
    assert "local batch 4" in outputs["p0"][0] and "local batch 8" in outputs["single"][0]

    params = {name: dict(np.load(tmp_path / f"{name}.npz")) for name in runs}
    assert set(params["p0"]) == set(params["single"]) and params["p0"]
    for key, ref in params["single"].items():
        # Both processes hold the same replicated parameters, bit for bit.
        np.testing.assert_array_equal(params["p0"][key], params["p1"][key], err_msg=key)
        # And the 2-process run took the single process's steps: SGD (tests/multihost_script.py), so
        # only float reassociation in the cross-process reductions separates them.
        np.testing.assert_allclose(params["p0"][key], ref, rtol=0, atol=1e-6, err_msg=key)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
