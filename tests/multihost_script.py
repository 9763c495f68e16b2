"""Run by tests/test_multihost.py: one process of a multi-host run, or the single-process reference.

Usage: multihost_script.py PROCESS_ID NUM_PROCESSES PORT DATA_ROOT OUT.npz

With NUM_PROCESSES > 1 the process joins a localhost cluster (gloo CPU collectives), reads only its
own shard of every global batch through the real grain pipeline (process_index/process_count), and
runs the jit-sharded train step over a mesh of every process's CPU device. It writes its local copy
of the final parameters to OUT.npz. train_and_evaluate is not used: its multihost path calls
jax.distributed.initialize() without arguments, which needs a cluster environment to detect
(SLURM, TPU, ...), and this test runs on localhost.
"""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.pop("XLA_FLAGS", None)  # one CPU device per process
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

process_id, num_processes, port, data_root, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                                   sys.argv[4], sys.argv[5])
jax.config.update("jax_threefry_partitionable", False)  # faster CPU compiles, as tests/conftest.py
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=60)

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain reads absl flags

from configs import demo  # noqa: E402
from svreid_jax import builders, parallel, variants  # noqa: E402
from svreid_jax.data import pipeline  # noqa: E402
from svreid_jax.state import create_train_state  # noqa: E402

NUM_STEPS = 3

config = demo.get_config("source_only,micro")
config.data.demo_root = data_root
config.data.num_threads = 1
assert jax.process_count() == num_processes and jax.process_index() == process_id

source, _, _ = builders.prepare_data(config, data_root)
source_it, _ = pipeline.source_stream(
    source.train, num_identities=config.batch.num_identities, num_instances=config.batch.num_instances,
    spec=builders.clip_spec(config, train=True), seed=config.seed, num_threads=1, prefetch=1,
    process_index=jax.process_index(), process_count=jax.process_count())
model = builders.create_model(config, source.num_train_pids)
init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
params, batch_stats = builders.init_variables(config, model, init_rng)
mesh = parallel.data_mesh()
state = create_train_state(config, model.apply, params, batch_stats, state_rng, 10)
# Plain SGD: the parameter change is the gradient itself, so the runs agree to float reassociation.
# Adam's first steps are ≈ lr·sign(g) and turn that noise in near-zero gradients into lr-sized
# differences (tests/parallel_script.py compares the same way).
sgd = optax.sgd(0.01)
state = parallel.replicate(state.replace(tx=sgd, opt_state=sgd.init(params)), mesh)
step = parallel.jit_train_step(variants.make_train_step(model, config), mesh, donate=False)
# Source-only: the target stream is not read, but the step still wants one target clip per device.
target = np.zeros((jax.local_device_count(),) + (config.data.seq_len, config.data.height, config.data.width, 3),
                  np.uint8)
for _ in range(NUM_STEPS):
    src = next(source_it)
    batch = {"source": {"video": src["video"], "pid": src["pid"]}, "target": {"video": target}}
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    jax.block_until_ready(metrics["loss"])  # collectives on fake/CPU devices must not queue up
flat = {jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
np.savez(out, **flat)
print(f"process {process_id}/{num_processes}: local batch {src['video'].shape[0]}, loss {float(metrics['loss']):.6f}")
