"""Tracklet features: the eval forward, clip embeddings from the eval pipeline, averaged per tracklet."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svreid_jax import builders, parallel
from svreid_jax.data import augment, pipeline
from svreid_jax.data.records import Tracklet


def make_embed_step(model):
    """Eval forward: uint8 clips [B,T,H,W,3] → BN-neck clip embeddings [B, D] (float32), student or teacher.

    The same function object comes back for an equal model, so jit's cache (keyed on the function)
    reuses the compiled executable across evaluations instead of tracing again.
    """
    try:
        return _cached_embed_step(model)
    except TypeError:  # an unhashable model: a fresh function, compiled anew
        return _embed_step(model)


def _embed_step(model):
    def embed(variables, video):
        out = model.apply(variables, augment.normalize(video), train=False)
        return out["bn_embedding"].astype(jnp.float32)

    return embed


_cached_embed_step = functools.lru_cache(maxsize=8)(_embed_step)


def tracklet_features(config, model, variables, tracklets: Sequence[Tracklet], mesh=None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float32 [N, D] features of `tracklets` with the config's evaluation clips (eval.temporal, seq_len,
    batch_size, flip_average; data.height/width)."""
    mesh = parallel.data_mesh() if mesh is None else mesh
    return extract(make_embed_step(model), variables, tracklets, spec=builders.clip_spec(config, train=False),
                   batch_size=config.eval.batch_size, method=config.eval.temporal, mesh=mesh,
                   num_threads=config.data.num_threads, flip_average=config.eval.flip_average, progress=progress)


def extract(embed_fn: Callable, variables, tracklets: Sequence[Tracklet], *, spec: pipeline.ClipSpec,
            batch_size: int, method: str, mesh: Mesh, num_threads: int = 2, flip_average: bool = False,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Features of every tracklet, float32 [N, D].

    embed_fn(variables, video uint8 [B,T,H,W,3]) -> [B, D]. Clips of one tracklet (several with
    method='dense') are averaged; flip_average also averages the mirrored clips. The batch is split
    over the mesh's 'data' axis, so batch_size must be a multiple of the device count.
    """
    if batch_size % mesh.size:
        raise ValueError(f"eval batch size {batch_size} is not a multiple of the {mesh.size} devices")
    data = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(embed_fn, in_shardings=(replicated, data), out_shardings=replicated)
    sums = None
    counts = np.zeros(len(tracklets), np.float64)
    batches = pipeline.eval_clips(tracklets, spec=spec, batch_size=batch_size, method=method, num_threads=num_threads)
    pending = []  # keep one batch in flight so decoding overlaps the device
    done = 0
    for batch in batches:
        video = jax.device_put(batch["video"], data)
        emb = jitted(variables, video)
        if flip_average:
            emb = (emb + jitted(variables, jax.device_put(batch["video"][:, :, :, ::-1], data))) / 2
        pending.append((emb, batch["tracklet"]))
        if len(pending) > 1:
            sums = _accumulate(sums, counts, *pending.pop(0), len(tracklets))
        done += len(batch["tracklet"])
        if progress is not None:
            progress(done, len(tracklets))
    for emb, idx in pending:
        sums = _accumulate(sums, counts, emb, idx, len(tracklets))
    if sums is None:
        raise ValueError("no tracklets to extract features from")
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


def _accumulate(sums, counts, emb, tracklet_index, num_tracklets):
    emb = np.asarray(jax.device_get(emb), np.float64)
    valid = tracklet_index >= 0
    if sums is None:
        sums = np.zeros((num_tracklets, emb.shape[1]), np.float64)
    np.add.at(sums, tracklet_index[valid], emb[valid])
    np.add.at(counts, tracklet_index[valid], 1.0)
    return sums
