"""Benchmark: CMC/mAP of svreid_jax.evaluation.ranking against the straightforward numpy loop.

A MARS-size problem (seeded): 1,980 queries x 9,330 gallery tracklets, 6 cameras, cosine distances of
synthetic features (identity centre + noise). Prints a markdown table. Labels (--labels):

  mars     (default) MARS's match and junk statistics: each identity has 1-30 tracklets spread over 2-6
           of the 6 cameras (at least one per camera it uses); one tracklet per (identity, camera) is a
           query, the rest form the gallery (the reference's query-excluded gallery), so a query's good
           matches are its identity's tracklets in other cameras and its junk the ones in its own camera;
           identities are added until there are 1,980 queries, and pid-0 distractors fill the gallery.
           About 9.5 good matches and 3.8 junk items per query, ~11 % of queries without a good match.
  simple   the earlier model: 625 identities, gallery tracklets copying a random query's (pid, camera),
           2,300 distractors (9.8 good matches per valid query).
  crowded  the worst case for per-match counting: 1,980 queries and 80 % of the gallery from 20 identities,
           random cameras (~310 good matches per query); such queries are ranked by sorting their rows.

    python benchmarks/ranking.py                     # MARS statistics
    python benchmarks/ranking.py --labels crowded    # many matches per query
    python benchmarks/ranking.py --num-gallery 1074 --num-ids 151 --num-distractors 0 --labels simple  # CCVID-like
    git show 9ffa7d5:svreid_jax/evaluation/ranking.py > /tmp/ranking_9ffa7d5.py
    python benchmarks/ranking.py --baseline /tmp/ranking_9ffa7d5.py   # also time an earlier ranking.py
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from svreid_jax.evaluation import ranking  # noqa: E402


def mars_like_problem(num_query, num_gallery, num_ids, num_cams, num_distractors, dim, noise, seed):
    """Labels drawn like MARS test plus features with an identity signal. Returns (q_feat, g_feat, labels)."""
    rng = np.random.default_rng(seed)
    # every identity is seen by 2..6 cameras; one query per (identity, camera) pair, as in MARS
    cams_per_id = rng.choice([2, 3, 4, 5, 6], size=num_ids, p=[0.3, 0.3, 0.2, 0.12, 0.08])
    cams_per_id = np.minimum(cams_per_id, num_cams)
    pairs = [(i + 1, c) for i in range(num_ids) for c in rng.choice(num_cams, cams_per_id[i], replace=False)]
    pick = np.sort(rng.choice(len(pairs), min(num_query, len(pairs)), replace=False))
    q_pids = np.array([pairs[k][0] for k in pick])
    q_cams = np.array([pairs[k][1] for k in pick])
    # gallery: tracklets of the query identities spread over their (identity, camera) pairs + distractors
    n_real = num_gallery - num_distractors
    owner = rng.integers(0, len(q_pids), n_real)
    g_pids = np.concatenate([q_pids[owner], np.zeros(num_distractors, np.int64)])
    g_cams = np.concatenate([q_cams[owner], rng.integers(0, num_cams, num_distractors)])
    perm = rng.permutation(num_gallery)
    g_pids, g_cams = g_pids[perm], g_cams[perm]
    centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    centres[0] = 0.0  # distractors: no identity signal
    q_feat = centres[q_pids] + noise * rng.standard_normal((len(q_pids), dim)).astype(np.float32)
    g_feat = centres[g_pids] + noise * rng.standard_normal((num_gallery, dim)).astype(np.float32)
    return q_feat, g_feat, (q_pids, g_pids, q_cams, g_cams)


def mars_stats_problem(num_query, num_gallery, num_cams, max_tracklets, dim, noise, seed):
    """MARS's match/junk statistics (module docstring). Returns (q_feat, g_feat, labels, num_ids)."""
    rng = np.random.default_rng(seed)
    q_pids, q_cams, g_pids, g_cams = [], [], [], []
    pid = 0
    while len(q_pids) < num_query:
        pid += 1
        n = int(rng.integers(1, max_tracklets + 1))
        used = int(min(n, rng.choice([2, 3, 4, 5, 6], p=[0.35, 0.25, 0.2, 0.12, 0.08]), num_cams))
        cams = rng.choice(num_cams, used, replace=False)
        per_cam = 1 + np.bincount(rng.integers(0, used, n - used), minlength=used)
        for cam, count in zip(cams.tolist(), per_cam.tolist()):
            in_gallery = count - 1 if len(q_pids) < num_query else count  # its first tracklet is the query
            if in_gallery < count:
                q_pids.append(pid)
                q_cams.append(cam)
            g_pids += [pid] * in_gallery
            g_cams += [cam] * in_gallery
    distractors = num_gallery - len(g_pids)
    if distractors < 0:
        raise ValueError(f"the identities drawn hold {len(g_pids)} gallery tracklets, more than {num_gallery}")
    g_pids = np.concatenate([g_pids, np.zeros(distractors, np.int64)])
    g_cams = np.concatenate([g_cams, rng.integers(0, num_cams, distractors)])
    perm = rng.permutation(num_gallery)
    g_pids, g_cams = g_pids[perm], g_cams[perm]
    q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
    centres = rng.standard_normal((pid + 1, dim)).astype(np.float32)
    centres[0] = 0.0  # distractors: no identity signal
    q_feat = centres[q_pids] + noise * rng.standard_normal((len(q_pids), dim)).astype(np.float32)
    g_feat = centres[g_pids] + noise * rng.standard_normal((num_gallery, dim)).astype(np.float32)
    return q_feat, g_feat, (q_pids, g_pids, q_cams, g_cams), pid


def crowded_problem(num_query, num_gallery, num_ids, num_cams, dim, noise, seed):
    """Few identities, each with ~num_gallery·0.8/num_ids gallery tracklets; random cameras everywhere."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = np.where(rng.random(num_gallery) < 0.8, rng.integers(1, num_ids + 1, num_gallery), 0)
    q_cams, g_cams = rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)
    centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    centres[0] = 0.0
    q_feat = centres[q_pids] + noise * rng.standard_normal((num_query, dim)).astype(np.float32)
    g_feat = centres[g_pids] + noise * rng.standard_normal((num_gallery, dim)).astype(np.float32)
    return q_feat, g_feat, (q_pids, g_pids, q_cams, g_cams)


def numpy_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The straightforward way: a full stable argsort of every row, then a Python loop over queries."""
    order = np.argsort(distmat, axis=1, kind="stable")
    cmcs, aps = [], []
    for i in range(distmat.shape[0]):
        same_pid = g_pids[order[i]] == q_pids[i]
        same_cam = g_cams[order[i]] == q_cams[i]
        matches = (same_pid & ~same_cam)[~(same_pid & same_cam)]
        if not matches.any():
            continue
        ranks = np.flatnonzero(matches)
        cmc = np.zeros(max_rank)
        if ranks[0] < max_rank:
            cmc[ranks[0]:] = 1.0
        cmcs.append(cmc)
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1.0)))
    return np.mean(cmcs, axis=0), float(np.mean(aps))


def timed(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-query", type=int, default=1980)
    p.add_argument("--num-gallery", type=int, default=9330)
    p.add_argument("--num-ids", type=int, default=625)
    p.add_argument("--num-cams", type=int, default=6)
    p.add_argument("--num-distractors", type=int, default=2300)
    p.add_argument("--dim", type=int, default=256, help="feature size of the synthetic features")
    p.add_argument("--noise", type=float, default=2.0, help="feature noise (std) around identity centres")
    p.add_argument("--max-rank", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=None, help="ranking.evaluate_ranking chunk_size")
    p.add_argument("--repeats", type=int, default=15, help="timed runs of ours (after the first)")
    p.add_argument("--numpy-repeats", type=int, default=3, help="timed runs of the numpy reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", choices=("mars", "simple", "crowded"), default="mars", help="label model (see above)")
    p.add_argument("--max-tracklets", type=int, default=30, help="--labels=mars: tracklets per identity, 1..this")
    p.add_argument("--baseline", default="", help="path of another ranking.py to time on the same problem")
    args = p.parse_args(argv)

    if args.labels == "mars":
        q_feat, g_feat, labels, args.num_ids = mars_stats_problem(
            args.num_query, args.num_gallery, args.num_cams, args.max_tracklets, args.dim, args.noise, args.seed)
        args.num_distractors = int(np.sum(labels[1] == 0))
    elif args.labels == "crowded":
        args.num_ids = 20
        q_feat, g_feat, labels = crowded_problem(args.num_query, args.num_gallery, args.num_ids, args.num_cams,
                                                 args.dim, args.noise, args.seed)
        args.num_distractors = int(np.sum(labels[1] == 0))
    else:
        q_feat, g_feat, labels = mars_like_problem(args.num_query, args.num_gallery, args.num_ids, args.num_cams,
                                                   args.num_distractors, args.dim, args.noise, args.seed)
    start = time.perf_counter()
    distmat = jax.block_until_ready(ranking.pairwise_distance(q_feat, g_feat, "cosine"))
    dist_first = time.perf_counter() - start
    _, dist_times = timed(lambda: jax.block_until_ready(ranking.pairwise_distance(q_feat, g_feat, "cosine")), 5)
    distmat_np = np.asarray(distmat)

    def ours(d=distmat):
        return ranking.evaluate_ranking(d, *labels, max_rank=args.max_rank, chunk_size=args.chunk_size)

    start = time.perf_counter()
    res = ours()
    first = time.perf_counter() - start
    res, times = timed(ours, args.repeats)
    _, times_np_input = timed(lambda: ours(distmat_np), max(3, args.repeats // 3))
    (cmc_ref, map_ref), times_ref = timed(
        lambda: numpy_reference(distmat_np, *labels, args.max_rank), args.numpy_repeats)

    baseline_times = None
    if args.baseline:
        spec = importlib.util.spec_from_file_location("ranking_baseline", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = baseline  # dataclasses look their module up while the file executes
        spec.loader.exec_module(baseline)
        base_res = baseline.evaluate_ranking(distmat, *labels, max_rank=args.max_rank)  # compile
        if base_res.mAP != res.mAP or not np.array_equal(base_res.cmc, res.cmc):
            print(f"- baseline {args.baseline} disagrees: mAP {base_res.mAP} vs {res.mAP}")
        # Interleaved with ours, so both see the same machine load.
        baseline_times, ours_again = [], []
        for _ in range(args.repeats):
            baseline_times += timed(lambda: baseline.evaluate_ranking(distmat, *labels, max_rank=args.max_rank), 1)[1]
            ours_again += timed(ours, 1)[1]
        times = ours_again

    d_map = abs(res.mAP - map_ref)
    d_cmc = float(np.abs(res.cmc - cmc_ref).max())
    agree = d_map <= 1e-6 and d_cmc <= 1e-6
    t_ours, t_np_in, t_ref = (statistics.median(t) for t in (times, times_np_input, times_ref))

    nq, ng = distmat_np.shape
    print(f"# Ranking benchmark: {nq} queries x {ng} gallery, {args.num_ids} ids, {args.num_cams} cams, "
          f"{args.num_distractors} distractors, seed {args.seed}")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"- machine: {os.cpu_count()} CPUs, {cpu_model()}; jax {jax.__version__} on {jax.devices()[0]}; "
          f"load average at the end (1/5/15 min): {load}")
    q_pids, g_pids, q_cams, g_cams = labels
    junk = [int(np.sum((g_pids == p) & (g_cams == c))) for p, c in zip(q_pids.tolist(), q_cams.tolist())]
    print(f"- labels: {args.labels}; good matches per valid query: mean {res.num_good[res.num_good > 0].mean():.1f}, "
          f"max {res.num_good.max()}; junk per query: mean {np.mean(junk):.1f}, max {max(junk)}; valid queries "
          f"{res.num_valid_queries}, skipped {res.num_skipped_queries}; queries ranked by sorting their row "
          f"(> {ranking._SORT_ABOVE} good matches): {int(np.sum(res.num_good > ranking._SORT_ABOVE))}")
    print(f"- result: R1 {100 * res.cmc[0]:.2f}%, R5 {100 * res.cmc[4]:.2f}%, mAP {100 * res.mAP:.2f}%; "
          f"agreement with numpy: |dmAP| {d_map:.1e}, max|dCMC| {d_cmc:.1e} -> {'OK' if agree else 'MISMATCH'}")
    print(f"- ours, first call (compile + run): {first:.3f} s, so compile ~ {first - t_ours:.3f} s; "
          f"timed: median of {len(times)} runs (min {min(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms)")
    print(f"- distance matrix (pairwise_distance, cosine, D={args.dim}, not in the times below): "
          f"{statistics.median(dist_times) * 1e3:.1f} ms (first call {dist_first:.3f} s)")
    print()
    print("| implementation | time | speed-up vs numpy |")
    print("|---|---|---|")
    print(f"| numpy: full stable argsort + per-query loop | {t_ref * 1e3:.0f} ms | 1.0x |")
    print(f"| svreid_jax `evaluate_ranking`, distmat a jax.Array | {t_ours * 1e3:.1f} ms | {t_ref / t_ours:.1f}x |")
    print(f"| svreid_jax `evaluate_ranking`, distmat an np.ndarray (incl. transfer) | {t_np_in * 1e3:.1f} ms "
          f"| {t_ref / t_np_in:.1f}x |")
    if baseline_times:
        t_base = statistics.median(baseline_times)
        print(f"| baseline {os.path.basename(args.baseline)}, distmat a jax.Array (interleaved with ours) | "
              f"{t_base * 1e3:.1f} ms (min {min(baseline_times) * 1e3:.1f}) | {t_ref / t_base:.1f}x |")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
