"""Benchmark: the plus variant's whole-set clustering (once per epoch in training), time and peak memory.

Synthetic tracklet features of D = 2,048 (ResNet-50's width): identity centres (one per 13.3 tracklets,
MARS's ratio) plus a per-camera offset plus noise, float32, seeded. Each (N, method) row runs in a
fresh subprocess, which times `plus.cluster_features` (camera centring, then for 'dbscan' the sparse
k-reciprocal Jaccard graph and DBSCAN on it with configs/mars.py:plus's k1, k2, eps, min_samples; for
'kmeans' its Lloyd iterations) on this host's default JAX backend: the first call (with compilation)
and the median of --repeats further calls, then the memory fill. Peak memory is the subprocess's
resource.getrusage ru_maxrss: "baseline" after the features exist (Python, JAX, the features), "peak"
after clustering (so peak − baseline is the clustering's own high-water mark at most). Prints a
markdown table.

    python benchmarks/clustering.py                              # N = 8,298 (MARS train), DBSCAN
    python benchmarks/clustering.py --num 50000 --repeats 0      # one cold call
    python benchmarks/clustering.py --num 2000 --dim 256 --methods dbscan,kmeans   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRACKLETS_PER_ID = 8298 / 625  # MARS train


def features(num: int, dim: int, num_cameras: int, seed: int):
    """(float32 [num, dim] features, int32 [num] camera ids, int [num] identities), made in float32
    chunks so the generator adds little to the peak."""
    rng = np.random.default_rng(seed)
    num_ids = max(1, round(num / TRACKLETS_PER_ID))
    ids = rng.integers(num_ids, size=num)
    cams = rng.integers(num_cameras, size=num).astype(np.int32)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    camera_bias = 0.5 * rng.standard_normal((num_cameras, dim), dtype=np.float32)
    x = np.empty((num, dim), np.float32)
    for start in range(0, num, 4096):
        stop = min(start + 4096, num)
        x[start:stop] = (centres[ids[start:stop]] + camera_bias[cams[start:stop]]
                         + 0.8 * rng.standard_normal((stop - start, dim), dtype=np.float32))
    return x, cams, ids


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(args) -> None:
    """One row: prints a JSON object."""
    import jax

    from configs import mars
    from svreid_jax.variants import plus

    x, cams, _ = features(args.num, args.dim, args.cameras, args.seed)
    config = mars.get_config("plus")
    config.plus.clustering = args.method
    baseline = _peak_mb()
    t0 = time.perf_counter()
    used: dict = {}  # the settings the label-free rule chose (k1, k2, min_samples, eps, k-means count)
    labels = plus.cluster_features(config, x, cams, epoch=0, report=used)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        labels = plus.cluster_features(config, x, cams, epoch=0)
        times.append(time.perf_counter() - t0)
    peak = _peak_mb()
    t0 = time.perf_counter()
    if config.plus.camera_proxies:  # the memory :plus fills: one slot per (pseudo-identity, camera)
        memory = plus.fill_proxy_memory(x, labels, cams, config.plus.max_clusters)
        kept, slots = memory["labels"], int(memory["valid"].sum())
    else:
        kept, _, valid = plus.fill_memory(x, labels, config.plus.max_clusters)
        slots = int(valid.sum())
    fill = time.perf_counter() - t0
    p = config.plus
    print(json.dumps({
        "num": args.num, "dim": args.dim, "method": args.method, "first": first,
        "warm": statistics.median(times) if times else None, "fill": fill, "baseline_mb": baseline,
        "peak_mb": peak, "clusters": int(labels.max()) + 1, "slots": slots,
        "outliers": float(np.mean(kept < 0)), "backend": jax.default_backend(), "jax": jax.__version__,
        "settings": f"k1 {used['k1']}, k2 {used['k2']}, eps {used['eps']:.3f}, min_samples {used['min_samples']}"
        if args.method == "dbscan" else f"{used['kmeans_clusters']} clusters, {p.kmeans_iters} Lloyd iterations"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", default="8298", help="comma-separated tracklet counts, one row each")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--methods", default="dbscan", help="comma-separated: dbscan, kmeans")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="dbscan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.num = int(args.num)
        child(args)
        return
    rows = []
    for num in (int(v) for v in args.num.split(",")):
        for method in args.methods.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--num", str(num), "--dim", str(args.dim),
                   "--cameras", str(args.cameras), "--method", method, "--repeats", str(args.repeats),
                   "--seed", str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, JAX {rows[0]['jax']} on {rows[0]['backend']}; "
          f"{args.cameras} cameras, {TRACKLETS_PER_ID:.1f} tracklets per identity\n")
    print("| N | D | method (configs/mars.py:plus) | first call (s) | warm call (s) | memory fill (s) | "
          "baseline RSS (MB) | peak RSS (MB) | clusters | memory slots | outliers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        warm = f"{r['warm']:.2f}" if r["warm"] is not None else "—"
        print(f"| {r['num']} | {r['dim']} | {r['method']} ({r['settings']}) | {r['first']:.2f} | {warm} | "
              f"{r['fill']:.2f} | {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | {r['clusters']} | {r['slots']} | "
              f"{r['outliers']:.3f} |")


if __name__ == "__main__":
    main()
