"""Run by tests/test_parallel.py in a subprocess with 4 fake CPU devices.

Takes the same 3 train steps on one device and jit-sharded over 4 devices, blocking every step
(XLA:CPU collectives deadlock otherwise with fake devices), and prints the largest parameter difference.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo  # noqa: E402
from svreid_jax import steps  # noqa: E402
from svreid_jax.models import reid  # noqa: E402
from svreid_jax.state import create_train_state  # noqa: E402

B, T, H, W = 16, 4, 32, 16


def run(devices):
    config = demo.get_config()
    config.model.width = 8
    config.model.disc_dropout = 0.0
    config.adaptation.kmeans_clusters = 4
    model = reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=16, disc_dropout=0.0)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), 10)
    mesh = steps.data_mesh(devices)
    step = steps.jit_train_step(steps.make_train_step(model, config), mesh, donate=False)
    state = steps.replicate(state, mesh)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {"source": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                            "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
                 "target": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                            "camid": np.arange(B, dtype=np.int32) % 3}}
        state, metrics = step(state, steps.shard_batch(batch, mesh))
        jax.block_until_ready(metrics["loss"])
    return jax.device_get(state.params), jax.device_get(state.batch_stats), float(metrics["loss"])


single = run(jax.devices()[:1])
sharded = run(jax.devices())
param_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single[0]), jax.tree.leaves(sharded[0])))
stats_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single[1]), jax.tree.leaves(sharded[1])))
print(f"devices={len(jax.devices())} param_diff={param_diff:.3e} stats_diff={stats_diff:.3e} "
      f"loss={single[2]:.6f}/{sharded[2]:.6f}")
