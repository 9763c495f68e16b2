"""Benchmark: the plus variant's whole-set clustering at MARS size (once per epoch in training).

8,298 tracklets (MARS's training set) of D = 2,048 synthetic features: 625 identity centres, each
tracklet its identity's centre plus noise, L2-normalised (seeded). Times, on this host's default JAX
backend: camera centring + k-reciprocal Jaccard distances + DBSCAN (plus.clustering='dbscan', the
MARS defaults of configs/default.py) and k-means (plus.clustering='kmeans', 500 clusters, 30 Lloyd
iterations), each the median of --repeats runs after one untimed warm-up (compilation), plus the
memory fill. Prints a markdown table (N, D, method, seconds) and the clusters found.

    python benchmarks/clustering.py
    python benchmarks/clustering.py --num 2000 --dim 256   # a quick look
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import mars  # noqa: E402
from svreid_jax.variants import plus  # noqa: E402


def features(num: int, dim: int, num_ids: int, num_cameras: int, seed: int):
    """(float32 [num, dim] features, int32 [num] camera ids, int [num] identities)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(num_ids, size=num)
    cams = rng.integers(num_cameras, size=num).astype(np.int32)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
    camera_bias = 0.5 * rng.normal(size=(num_cameras, dim)).astype(np.float32)
    x = centres[ids] + camera_bias[cams] + 0.8 * rng.normal(size=(num, dim)).astype(np.float32)
    return x, cams, ids


def timed(fn, repeats: int):
    fn()  # compilation and caches
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=8298)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--num-ids", type=int, default=625)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, cams, ids = features(args.num, args.dim, args.num_ids, args.cameras, args.seed)
    config = mars.get_config("plus")
    rows = []
    for method in plus.CLUSTERINGS:
        config.plus.clustering = method
        seconds, labels = timed(lambda: plus.cluster_features(config, x, cams, epoch=0), args.repeats)
        if config.plus.camera_proxies:  # the memory :plus fills: one slot per (pseudo-identity, camera)
            fill, memory = timed(lambda: plus.fill_proxy_memory(x, labels, cams, config.plus.max_clusters),
                                 args.repeats)
            kept, slots = memory["labels"], int(memory["valid"].sum())
            found = len(np.unique(memory["slot_cluster"][memory["valid"]]))
        else:
            fill, (kept, _, valid) = timed(lambda: plus.fill_memory(x, labels, config.plus.max_clusters), args.repeats)
            found = slots = int(valid.sum())
        outliers = float(np.mean(kept < 0))
        rows.append((method, seconds, fill, found, slots, outliers))
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, JAX {jax.__version__} on {jax.default_backend()}; "
          f"{args.num_ids} identities, {args.cameras} cameras\n")
    print("| N | D | method | seconds | memory fill (s) | clusters | memory slots | outliers |")
    print("|---|---|---|---|---|---|---|---|")
    for method, seconds, fill, found, slots, outliers in rows:
        print(f"| {args.num} | {args.dim} | {method} | {seconds:.2f} | {fill:.2f} | {found} | {slots} | {outliers:.3f} |")


if __name__ == "__main__":
    main()
