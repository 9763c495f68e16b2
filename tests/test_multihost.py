"""Multi-host data parallelism on localhost: two processes (gloo CPU collectives), each reading its own
shard of the data through the grain pipeline, end with the parameters of a single-process run on the
same global batches (tests/multihost_script.py does the work)."""
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
    config = demo.get_config("source_only,micro")
    demo_data.ensure(str(tmp_path / "data"), **config.data.demo_options.to_dict())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    runs = {name: (pid, count) for name, pid, count in [("p0", 0, 2), ("p1", 1, 2), ("single", 0, 1)]}
    procs = {name: subprocess.Popen([sys.executable, SCRIPT, str(pid), str(count), str(port), str(tmp_path / "data"),
                                     str(tmp_path / f"{name}.npz")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name, (pid, count) in runs.items()}
    outputs = {}
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
        # And the 2-process run took the single process's steps (float reassociation in the
        # cross-process reductions only).
        np.testing.assert_allclose(params["p0"][key], ref, rtol=0, atol=1e-5, err_msg=key)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
