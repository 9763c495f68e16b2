"""Tracklet features: the eval forward, clip embeddings from the eval pipeline, averaged per tracklet."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svreid_jax import builders, ops, parallel
from svreid_jax.data import augment, pipeline
from svreid_jax.data.records import Tracklet


class FeatureError(ValueError):
    """Features no metric may be computed from: NaN or inf values, or a set whose every vector is zero.
    The message is one line with the counts per set (`check_features`)."""


def feature_counts(feats) -> tuple[int, int]:
    """(rows with a NaN or inf, finite rows of norm ≤ ops.EPS) of float [N, D] features. A row that
    small has no direction: l2_normalise leaves it (near) zero and its cosine distance to every
    other feature is the same, so its rank is decided by gallery order alone."""
    x = np.asarray(feats)
    finite = np.all(np.isfinite(x), axis=-1)
    zero = finite & (np.linalg.norm(np.where(finite[:, None], x, 0.0).astype(np.float64), axis=-1) <= ops.EPS)
    return int(np.sum(~finite)), int(np.sum(zero))


def check_features(sets: dict[str, np.ndarray], context: str = "evaluation") -> dict[str, int]:
    """Refuse features that would give plausible-looking but meaningless metrics (docs/USAGE.md,
    "Evaluation sizing and feature checks").

    sets: {name: float [N, D]}, e.g. {'query': …, 'gallery': …}. Raises FeatureError (one line, the
    counts of every set) when any row of any set has a NaN or inf, or when every row of some non-empty
    set is zero-norm. Otherwise returns {name: count} for the sets with some zero-norm rows (empty
    when none has any), after one warning: the caller records the counts with its metrics.
    """
    counts = {name: (len(np.asarray(x)), *feature_counts(x)) for name, x in sets.items()}
    bad = any(nonfinite for _, nonfinite, _ in counts.values())
    empty = any(n and zero == n for n, _, zero in counts.values())
    zero_sets = {name: zero for name, (_, _, zero) in counts.items() if zero}
    if bad or empty:
        parts = [f"{name}: {nonfinite} of {n} non-finite (NaN/inf), {zero} zero-norm"
                 for name, (n, nonfinite, zero) in counts.items()]
        raise FeatureError(f"{context} features cannot be ranked ({'; '.join(parts)}); no metrics computed from "
                           "them: the model's parameters or BatchNorm statistics are probably not finite (a "
                           "diverged run?) or its output collapsed to zero")
    if zero_sets:
        logging.warning("%s features: %s zero-norm (no direction: their cosine ranks follow gallery order); "
                        "the metrics record the counts as zero_norm_<set>", context,
                        ", ".join(f"{zero} of {counts[name][0]} {name}" for name, zero in zero_sets.items()))
    return zero_sets


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


# Evaluation sizing when eval.batch_size / eval.num_threads are 0 (docs/USAGE.md, "Evaluation sizing and
# feature checks"). CPU hosts keep the sizes evaluation always had, so their features are unchanged bit
# for bit; an accelerator gets a batch that fills it and a decoding thread per host core.
CPU_BATCH = 32  # clips per batch on CPU (rounded up to a multiple of the device count)
ACCELERATOR_FRAMES_PER_DEVICE = 512  # frames per device per batch on GPU/TPU: 128 clips of 4 frames
MAX_AUTO_THREADS = 32  # decoding threads at most on an accelerator host (one per core below that)


def _platform(mesh: Mesh) -> str:
    return mesh.devices.flat[0].platform


def eval_batch_size(requested: int, mesh: Mesh, seq_len: int) -> int:
    """Clips per evaluation batch: `requested` when > 0, else chosen from the mesh: CPU_BATCH on CPU,
    max(1, ACCELERATOR_FRAMES_PER_DEVICE // seq_len) per device × the device count on GPU/TPU (a chosen
    size is a multiple of the device count; `extract` refuses a requested one that is not)."""
    if requested:
        return int(requested)
    if _platform(mesh) == "cpu":
        return -(-CPU_BATCH // mesh.size) * mesh.size
    return max(1, ACCELERATOR_FRAMES_PER_DEVICE // int(seq_len)) * mesh.size


def eval_num_threads(requested: int, mesh: Mesh, cpu_threads: int) -> int:
    """Decoding threads of evaluation: `requested` when > 0, else `cpu_threads` (data.num_threads) on CPU and
    min(os.cpu_count(), MAX_AUTO_THREADS), at least cpu_threads, on GPU/TPU."""
    if requested:
        return int(requested)
    if _platform(mesh) == "cpu":
        return int(cpu_threads)
    return max(int(cpu_threads), min(os.cpu_count() or 1, MAX_AUTO_THREADS))


def eval_sizing(config, mesh: Mesh) -> tuple[int, int]:
    """(batch_size, num_threads) of evaluation for `config` on `mesh`: eval.batch_size and eval.num_threads,
    0 (or absent, in configs stored before the field) meaning chosen from the devices (eval_batch_size,
    eval_num_threads). Every evaluation path sizes itself here."""
    e = config.eval
    return (eval_batch_size(int(e.get("batch_size", 0) or 0), mesh, int(e.seq_len)),
            eval_num_threads(int(e.get("num_threads", 0) or 0), mesh, int(config.data.num_threads)))


def tracklet_features(config, model, variables, tracklets: Sequence[Tracklet], mesh=None,
                      progress: Callable[[int, int], None] | None = None, temporal: str | None = None) -> np.ndarray:
    """float32 [N, D] features of `tracklets` with the config's evaluation clips (eval.temporal, seq_len,
    flip_average; data.height/width), sized by `eval_sizing`; `temporal`, when given, replaces eval.temporal."""
    mesh = parallel.data_mesh() if mesh is None else mesh
    batch_size, num_threads = eval_sizing(config, mesh)
    return extract(make_embed_step(model), variables, tracklets, spec=builders.clip_spec(config, train=False),
                   batch_size=batch_size, method=temporal or config.eval.temporal, mesh=mesh,
                   num_threads=num_threads, flip_average=config.eval.flip_average, progress=progress)


def extract(embed_fn: Callable, variables, tracklets: Sequence[Tracklet], *, spec: pipeline.ClipSpec,
            batch_size: int, method: str, mesh: Mesh, num_threads: int = 2, flip_average: bool = False,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Features of every tracklet, float32 [N, D].

    embed_fn(variables, video uint8 [B,T,H,W,3]) -> [B, D]. Clips of one tracklet (several with
    method='dense') are averaged; flip_average also averages the mirrored clips. The batch is split
    over the mesh's 'data' axis, so batch_size must be a multiple of the device count; batch_size or
    num_threads 0 chooses it from the mesh (eval_batch_size, eval_num_threads with 2 threads on CPU).
    """
    batch_size = eval_batch_size(batch_size, mesh, spec.seq_len)
    num_threads = eval_num_threads(num_threads, mesh, 2)
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
