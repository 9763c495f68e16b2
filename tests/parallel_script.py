"""Run by tests/test_parallel.py in a subprocess with 4 fake CPU devices.

1. The paper-variant train step (CE, triplet, both domain losses, camera-centred teacher k-means
   consistency) on one device, jit-sharded over 4 devices and pmapped over 4 devices with sync BN,
   on the same global batches: prints the largest parameter / BN-statistics differences against the single device.
2. pmap with parallel.sync_bn=False on a source-only config (CE + batch-hard triplet) against a
   hand-made per-device reference: the model applied to each device's quarter of the batch with
   that quarter's own BN statistics, CE averaged over all clips, triplet on the concatenated
   embeddings, running statistics averaged over the quarters. The same reference with one chunk is
   the global-BN update, which per-device BN must differ from.

Every step is blocked on (XLA:CPU collectives deadlock otherwise with fake devices).

Equality config: Random Erasing, the teacher's own flip and discriminator dropout are off. Those
draw per item from a key whose draws depend on the local batch shape (and under pmap on the
device), so the three layouts would augment differently; nothing else in the step is random per item.
"""
import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import demo  # noqa: E402
from svreid_jax import losses, parallel, variants  # noqa: E402
from svreid_jax.data import augment  # noqa: E402
from svreid_jax.models import grl, reid  # noqa: E402
from svreid_jax.state import create_train_state  # noqa: E402

jax.config.update("jax_threefry_partitionable", False)  # faster CPU compiles, as tests/conftest.py
T0 = time.perf_counter()


def lap(what):
    print(f"[{time.perf_counter() - T0:.0f}s] {what}", file=sys.stderr, flush=True)

B, T, H, W = 16, 4, 32, 16
NUM_STEPS = 2


def make_config(source_only: bool = False):
    config = demo.get_config()
    config.model.width = 8
    config.model.disc_dropout = 0.0
    config.augment.erasing_probability = 0.0
    config.adaptation.teacher_augment = False
    config.adaptation.kmeans_clusters = 4
    config.adaptation.camera_centred = True  # the camera ids must be gathered along with the embeddings
    if source_only:
        config.loss.frame_domain = config.loss.clip_domain = 0.0
        config.loss.consistency_ce = config.loss.consistency_dist = 0.0
        config.loss.camera_alignment = 0.0
    return config


MODEL = reid.ReIDNet(num_classes=4, backbone={"depth": "tiny", "width": 8}, disc_hidden=16, disc_dropout=0.0)


def initial_state(config):
    params, batch_stats = reid.init_model(MODEL, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(config, MODEL.apply, params, batch_stats, jax.random.PRNGKey(1), 10)
    # Plain SGD: the update is proportional to the gradient, so a gradient off by a factor (the
    # pmap/shard_map scaling pitfall) shows. Adam's first steps are ≈ lr·sign(g): blind to the scale,
    # and it turns float noise in near-zero gradients into lr-sized differences.
    sgd = optax.sgd(0.01)
    return state.replace(tx=sgd, opt_state=sgd.init(params))


def batches():
    rng = np.random.default_rng(0)
    for _ in range(NUM_STEPS):
        yield {"source": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                          "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
               "target": {"video": rng.integers(0, 255, (B, T, H, W, 3), dtype=np.uint8),
                          "camid": np.arange(B, dtype=np.int32) % 3}}


def run_jit(config, devices):
    mesh = parallel.data_mesh(devices)
    step = parallel.jit_train_step(variants.make_train_step(MODEL, config), mesh, donate=False)
    state = parallel.replicate(initial_state(config), mesh)
    for batch in batches():
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
        jax.block_until_ready(metrics["loss"])
    return (jax.device_get((state.params, state.batch_stats, state.ema_batch_stats)), float(metrics["loss"]),
            float(metrics["grad_norm"]))


def run_pmap(config):
    n = jax.local_device_count()
    step = parallel.pmap_train_step(variants.make_train_step(MODEL, config, axis_name=parallel.PMAP_AXIS), donate=False)
    state = parallel.replicate_state(initial_state(config))
    for batch in batches():
        state, metrics = step(state, parallel.split_for_devices(batch, n))
        jax.block_until_ready(metrics["loss"])
    params = jax.device_get(state.params)
    # The replicas must agree with each other, not just device 0 with the reference.
    spread = max(float(np.max(np.abs(leaf - leaf[:1]))) for leaf in jax.tree.leaves(params))
    host = jax.device_get(parallel.unreplicate_state((state.params, state.batch_stats, state.ema_batch_stats)))
    return host, float(metrics["loss"]), float(metrics["grad_norm"]), spread


def run_per_device_reference(config, chunks: int):
    """Source-only update with BN statistics per chunk of B / chunks clips, written out by hand."""
    state = initial_state(config)

    @jax.jit
    def grads_and_stats(state, video, labels):
        x = augment.normalize(video)
        beta = grl.grl_beta(state.step, config.adaptation.grl_max_steps)

        def loss_fn(params):
            outs, stats = [], []
            for c in range(chunks):
                part = slice(c * B // chunks, (c + 1) * B // chunks)
                out, new_vars = MODEL.apply({"params": params, "batch_stats": state.batch_stats}, x[part],
                                            train=True, grl_beta=beta, mutable=["batch_stats"])
                outs.append(out)
                stats.append(new_vars["batch_stats"])
            logits = jnp.concatenate([o["logits"] for o in outs])
            embeddings = jnp.concatenate([o["bn_embedding"] for o in outs])
            loss = (losses.cross_entropy(logits, labels)
                    + losses.batch_hard_triplet(embeddings, labels, config.loss.triplet_margin,
                                                config.loss.triplet_metric))
            return loss, jax.tree.map(lambda *s: sum(s) / chunks, *stats)

        return jax.grad(loss_fn, has_aux=True)(state.params)

    for batch in batches():
        grads, stats = grads_and_stats(state, batch["source"]["video"], batch["source"]["pid"])
        state = state.apply_gradients(grads=grads, batch_stats=stats)
    return jax.device_get((state.params, state.batch_stats))


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


config = make_config()
single, single_loss, single_norm = run_jit(config, jax.devices()[:1])
lap("single")
sharded, sharded_loss, sharded_norm = run_jit(config, jax.devices())
lap("jit")
pmapped, pmap_loss, pmap_norm, pmap_spread = run_pmap(config)
lap("pmap")
print(f"devices={len(jax.devices())}")
for name, (got, loss, norm) in {"jit": (sharded, sharded_loss, sharded_norm),
                                "pmap": (pmapped, pmap_loss, pmap_norm)}.items():
    print(f"{name}: param_diff={max_diff(single[0], got[0]):.3e} stats_diff={max_diff(single[1], got[1]):.3e} "
          f"teacher_stats_diff={max_diff(single[2], got[2]):.3e} loss_diff={abs(single_loss - loss):.3e} "
          f"grad_norm_rel={abs(single_norm - norm) / single_norm:.3e}")
print(f"pmap_replica_spread={pmap_spread:.3e}")

source_only = make_config(source_only=True)
source_only.parallel.sync_bn = False
local_bn, _, _, local_spread = run_pmap(source_only)
lap("pmap nosync")
per_device = run_per_device_reference(source_only, chunks=jax.local_device_count())
lap("ref 4")
global_bn = run_per_device_reference(source_only, chunks=1)
lap("ref 1")
print(f"nosync: ref_param_diff={max_diff(per_device[0], local_bn[0]):.3e} "
      f"ref_stats_diff={max_diff(per_device[1], local_bn[1]):.3e} "
      f"global_param_diff={max_diff(global_bn[0], local_bn[0]):.3e} replica_spread={local_spread:.3e}")
