"""Benchmark: the real datasets' scale, rehearsed: index files at MARS's and LS-VID's real sizes, measured.

    python benchmarks/scale.py --root /tmp/svreid_scale                     # generate once, then measure
    python benchmarks/scale.py --root /tmp/svreid_scale --datasets mars --skip-pack
    python benchmarks/scale.py --root /tmp/svreid_scale_quarter --fraction 0.25   # the same at 1/4 size

Generated (once per --root and --fraction; reused while its stamp file matches):

  mars   info/train_name.txt (509,914 frame names) and test_name.txt (681,089): 1,191,003 names;
         tracks_train_info.mat (8,298 rows, 625 identities), tracks_test_info.mat (12,180 rows: 1,980 queries,
         9,330 gallery tracklets with pid-0 distractors, 870 junk rows with pid −1), query_IDX.mat (1,980);
         bbox_{train,test}/<pid4>/<name>: one hard link per frame name to one tiny JPEG. Identities have 1-30
         tracklets over 2-6 of the 6 cameras; one query per (identity, camera); lengths 2-999 frames.
  lsvid  list_sequence/list_seq_train.txt (2,831 tracklets of 842 identities) and list_seq_test.txt (11,333:
         3,504 queries and 7,829 gallery tracklets), test/data/info_test.mat (v7.3, `query`), 15 cameras,
         ~2.82 million frames (hard links) in tracklet_{train,test}/<pid4>/ folders.

Measured per dataset, in this process, one phase after the other (wall time; CPU time of the process; peak
RSS of the process during the phase, its peak reset before each phase; and the peak's rise over the RSS at
the phase's start):

  read        datasets.load_with_stats (every list line, every frame name looked up in its folder listing)
  check       python -m svreid_jax.data.check's run() (read + the statistics tables)
  P×K epoch   sampling.identity_epoch over the training split (P×K = 8×4), then pipeline.source_stream for
              a whole epoch of batches (frames decoded at 16×8, so the sampler and stream dominate)
  target      sampling.random_epoch over the training split as target, then pipeline.target_stream's epoch
  pack        data.pack.pack into <root>/packed (array_record; 1.19 M / 2.8 M frame records), and load_packed
  evaluate    (mars) the MARS protocol from given features: 2,048 floats per tracklet (a centre per identity
              plus noise), then evaluators 'mars' (cosine distances and rankings for the exclude_query,
              include_query and official 'all' galleries; 'all' re-reads the test list): first call
              (compiles) and a second one

Goals on the 2-core machine: each index read ≤ 10 s, peak ≤ 2 GB, nothing quadratic in the number of
frames (compare a --fraction 0.25 run: times should scale by ~4, not ~16).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import h5py  # noqa: E402
import jax  # noqa: E402
import scipy.io  # noqa: E402
from memory import peak_rss_bytes, proc_status, reset_peak_rss  # noqa: E402
from PIL import Image  # noqa: E402

from svreid_jax.data import check, datasets, pack, pipeline, sampling  # noqa: E402
from svreid_jax.evaluation import evaluators, protocols  # noqa: E402

GENERATOR_VERSION = 1
MARS = dict(train_frames=509_914, test_frames=681_089, train_tracklets=8_298, train_ids=625, queries=1_980,
            gallery=9_330, junk=870, cams=6, max_tracklets=30)
LSVID = dict(train_tracklets=2_831, train_ids=842, queries=3_504, gallery=7_829, frames=2_820_000, cams=15)
MAX_LEN = 999  # MARS frame numbers have three digits


# ---------------------------------------------------------------------------------------------
# Generation


def _lengths(rng, count: int, total: int, low: int = 2, high: int = MAX_LEN) -> np.ndarray:
    """`count` tracklet lengths in [low, high] (log-normal shape, like real tracklets) summing to `total`."""
    if not low * count <= total <= high * count:
        raise ValueError(f"cannot split {total} frames into {count} tracklets of {low}..{high}")
    raw = rng.lognormal(mean=np.log(total / count) - 0.5, sigma=1.0, size=count)
    lengths = np.clip(np.round(raw * total / raw.sum()), low, high).astype(np.int64)
    while lengths.sum() != total:  # spread the rounding remainder one frame at a time over random tracklets
        diff = int(total - lengths.sum())
        pick = rng.choice(count, size=min(abs(diff), count), replace=False)
        step = 1 if diff > 0 else -1
        ok = (lengths[pick] < high) if step > 0 else (lengths[pick] > low)
        lengths[pick[ok]] += step
    return lengths


def _identities(rng, num_queries: int, cams: int, max_tracklets: int) -> list[tuple[int, int, bool]]:
    """(pid, camera 1..cams, is_query) per tracklet: identities with 1..max_tracklets tracklets over 2..6
    cameras, one query per (identity, camera), added until there are num_queries queries."""
    out: list[tuple[int, int, bool]] = []
    queries, pid = 0, 0
    while queries < num_queries:
        pid += 1
        n = int(rng.integers(1, max_tracklets + 1))
        used = int(min(n, rng.choice([2, 3, 4, 5, 6], p=[0.35, 0.25, 0.2, 0.12, 0.08]), cams))
        chosen = rng.choice(cams, used, replace=False) + 1
        per_cam = 1 + np.bincount(rng.integers(0, used, n - used), minlength=used)
        for cam, count in zip(chosen.tolist(), per_cam.tolist()):
            for i in range(count):
                is_query = i == 0 and queries < num_queries
                queries += is_query
                out.append((pid, cam, is_query))
    return out


def _tiny_jpeg(path: str) -> None:
    Image.fromarray(np.full((16, 8, 3), 128, np.uint8)).save(path, quality=90)


_copies = itertools.count()
_LINKS_PER_FILE = 60_000  # ext4 allows 65,000 links to one inode: a fresh copy of the JPEG per 60,000 frames


def _link_all(source: str, paths: list[str]) -> None:
    """One hard link per path, to copies of `source` (the frames take no space beyond directory entries)."""
    folders = sorted({os.path.dirname(p) for p in paths})
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    link = os.link
    for start in range(0, len(paths), _LINKS_PER_FILE):
        copy = f"{source}.{next(_copies)}"  # a new inode every time (copyfile onto an old name would reuse it)
        shutil.copyfile(source, copy)
        for p in paths[start:start + _LINKS_PER_FILE]:
            link(copy, p)


def generate_mars(root: str, fraction: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    c = {k: (max(1, round(v * fraction)) if k not in ("cams", "max_tracklets") else v) for k, v in MARS.items()}
    info = os.path.join(root, "info")
    os.makedirs(info, exist_ok=True)
    jpeg = os.path.join(root, "frame.jpg")
    _tiny_jpeg(jpeg)

    # Train: train_ids identities (pids 1..1500 as in MARS), tracklets spread over them and 6 cameras.
    train_pids = np.sort(rng.choice(np.arange(1, 1501), c["train_ids"], replace=False))
    owner = np.concatenate([np.arange(c["train_ids"]),
                            rng.integers(0, c["train_ids"], c["train_tracklets"] - c["train_ids"])])
    owner.sort()
    train = [(int(train_pids[o]), int(rng.integers(1, c["cams"] + 1)), False) for o in owner]
    # Test: identities until there are `queries` queries, then distractors (pid 0) and junk (pid −1).
    test = _identities(rng, c["queries"], c["cams"], c["max_tracklets"])
    test = [(p + 1500, cam, q) for p, cam, q in test]  # test pids after the training ones
    gallery_real = sum(not q for _, _, q in test)
    distractors = c["gallery"] - gallery_real
    if distractors < 0:
        raise ValueError(f"{gallery_real} gallery tracklets drawn, more than {c['gallery']}")
    test += [(0, int(rng.integers(1, c["cams"] + 1)), False) for _ in range(distractors)]
    test += [(-1, int(rng.integers(1, c["cams"] + 1)), False) for _ in range(c["junk"])]
    order = rng.permutation(len(test))  # MARS lists test rows by pid; any order works for the reader
    test = [test[i] for i in order]
    test.sort(key=lambda r: r[0])

    def write(split: str, rows, total_frames, names_file, mat_file, key):
        lengths = _lengths(rng, len(rows), total_frames)
        names, paths, tracks = [], [], []
        counter: dict[int, int] = {}
        bbox = os.path.join(root, f"bbox_{split}")
        for (pid, cam, _), n in zip(rows, lengths.tolist()):
            counter[pid] = counter.get(pid, 0) + 1
            tag = "00-1" if pid == -1 else f"{pid:04d}"
            start = len(names) + 1
            for f in range(1, n + 1):
                name = f"{tag}C{cam}T{counter[pid]:04d}F{f:03d}.jpg"
                names.append(name)
                paths.append(os.path.join(bbox, tag, name))
            tracks.append((start, len(names), pid, cam))
        with open(os.path.join(info, names_file), "w") as fh:
            fh.write("\n".join(names) + "\n")
        scipy.io.savemat(os.path.join(info, mat_file), {key: np.asarray(tracks, np.float64)})
        _link_all(jpeg, paths)
        return tracks

    write("train", train, c["train_frames"], "train_name.txt", "tracks_train_info.mat", "track_train_info")
    tracks = write("test", test, c["test_frames"], "test_name.txt", "tracks_test_info.mat", "track_test_info")
    query_rows = [i + 1 for i, row in enumerate(test) if row[2]]
    scipy.io.savemat(os.path.join(info, "query_IDX.mat"), {"query_IDX": np.asarray(query_rows, np.float64)[None]})
    return {"frames": c["train_frames"] + c["test_frames"], "train_tracklets": len(train), "test_rows": len(tracks),
            "queries": len(query_rows), "distractors": distractors, "junk": c["junk"]}


def generate_lsvid(root: str, fraction: float, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    c = {k: (max(1, round(v * fraction)) if k != "cams" else v) for k, v in LSVID.items()}
    os.makedirs(os.path.join(root, "list_sequence"), exist_ok=True)
    os.makedirs(os.path.join(root, "test", "data"), exist_ok=True)
    jpeg = os.path.join(root, "frame.jpg")
    _tiny_jpeg(jpeg)
    n_test = c["queries"] + c["gallery"]
    lengths = _lengths(rng, c["train_tracklets"] + n_test, c["frames"], high=2000)

    def rows(count, num_ids, first_pid):
        owner = np.sort(np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, count - num_ids)]))
        return [(first_pid + int(o), int(rng.integers(1, c["cams"] + 1))) for o in owner]

    train = rows(c["train_tracklets"], c["train_ids"], 1)
    test_ids = max(1, round(n_test / 3.9))  # ~3.9 test tracklets per identity
    test = rows(n_test, test_ids, 1 + c["train_ids"])
    paths, k = [], 0
    for split, items, list_name in (("train", train, "list_seq_train.txt"), ("test", test, "list_seq_test.txt")):
        lines, counter = [], {}
        for pid, cam in items:
            counter[pid] = counter.get(pid, 0) + 1
            prefix = f"tracklet_{split}/{pid:04d}/{pid:04d}_{counter[pid]:04d}_{cam}_"
            lines.append(f"{prefix} {pid}")
            paths.extend(os.path.join(root, f"{prefix}{f:04d}.jpg") for f in range(1, int(lengths[k]) + 1))
            k += 1
        with open(os.path.join(root, "list_sequence", list_name), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    chosen = np.sort(rng.choice(n_test, c["queries"], replace=False))  # 0-based test rows
    with h5py.File(os.path.join(root, "test", "data", "info_test.mat"), "w") as f:
        f.create_dataset("query", data=(chosen + 1).astype(np.float64)[:, None])
    _link_all(jpeg, paths)
    return {"frames": len(paths), "train_tracklets": len(train), "test_rows": n_test, "queries": len(chosen)}


GENERATORS = {"mars": generate_mars, "lsvid": generate_lsvid}


def ensure(name: str, root: str, fraction: float) -> tuple[dict, float]:
    """Generate dataset `name` under root/name unless its stamp says it is there; (summary, seconds)."""
    folder = os.path.join(root, name)
    stamp_path = os.path.join(folder, "generated.json")
    want = {"version": GENERATOR_VERSION, "fraction": fraction}
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            stamp = json.load(f)
        if {k: stamp.get(k) for k in want} == want:
            return stamp["summary"], 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    summary = GENERATORS[name](folder, fraction)
    seconds = time.perf_counter() - start
    with open(stamp_path, "w") as f:
        json.dump({**want, "summary": summary, "seconds": seconds}, f)
    return summary, seconds


# ---------------------------------------------------------------------------------------------
# Measuring


class Phase:
    """Wall time, peak RSS (VmHWM after a reset) and its rise over the RSS at the start."""

    def __init__(self, rows: list, dataset: str, name: str, note: str = ""):
        self.rows, self.dataset, self.name, self.note = rows, dataset, name, note

    def __enter__(self):
        reset_peak_rss()
        self.rss0 = proc_status("VmRSS") or 0
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.t0
        # CPU time of all the process's threads: on a machine shared with other jobs it moves far less than
        # wall time, and for the single-threaded phases it is what an idle core would take.
        cpu = time.process_time() - self.cpu0
        if exc[0] is None:
            peak = peak_rss_bytes()
            self.rows.append((self.dataset, self.name, seconds, cpu, peak, peak - self.rss0, self.note))
            print(f"  {self.dataset} {self.name}: {seconds:.2f} s (CPU {cpu:.2f} s), peak RSS {peak / 2**30:.2f} GiB "
                  f"(+{(peak - self.rss0) / 2**20:.0f} MiB) {self.note}", flush=True)
        return False


def epoch_of_stream(make, batches: int) -> int:
    it = make()
    frames = 0
    for _ in range(batches):
        frames += next(it)["video"].shape[0]
    return frames


def features_for(query, gallery, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Features with an identity signal (one centre per pid, shared by query and gallery; distractors none)."""
    q_pids = np.array([t.pid for t in query])
    g_pids = np.array([t.pid for t in gallery])
    uniq, inv = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)
    centres = rng.standard_normal((len(uniq), dim)).astype(np.float32)
    centres[uniq == 0] = 0.0
    # Noise 4 per dimension puts R-1 and mAP near the paper's MARS figures (tens of %), not at 100 %.
    feats = centres[inv] + 4.0 * rng.standard_normal((len(inv), dim)).astype(np.float32)
    return feats[:len(q_pids)], feats[len(q_pids):]


def measure(name: str, root: str, rows: list, args) -> None:
    folder = os.path.join(root, name)
    tiny = pipeline.ClipSpec(seq_len=4, height=16, width=8, decoder="pil")
    with Phase(rows, name, "read", "datasets.load_with_stats"):
        splits, stats = datasets.load_with_stats(name, folder)
    frames = sum(len(t) for s in (splits.train, splits.query, splits.gallery) for t in s)
    print(f"  {name}: {len(splits.train):,} train / {len(splits.query):,} query / {len(splits.gallery):,} gallery "
          f"tracklets, {frames:,} frames; {stats}", flush=True)
    with Phase(rows, name, "check", "data.check run() incl. its read"):
        out = io.StringIO()
        assert check.run(name, folder, {}, out=out) == 0
    pids = [t.pid for t in splits.train]
    with Phase(rows, name, "P×K sampler, 1 epoch", "sampling.identity_epoch, P×K = 8×4") as ph:
        order = sampling.identity_epoch(pids, 4, 0, 0)
        ph.note += f": {len(order):,} items"
    steps = len(order) // 32
    with Phase(rows, name, "P×K stream, 1 epoch", f"pipeline.source_stream, {steps} batches of 32 clips at 16×8"):
        epoch_of_stream(lambda: pipeline.source_stream(splits.train, num_identities=8, num_instances=4, spec=tiny,
                                                       seed=0, num_threads=2, prefetch=2)[0], steps)
    with Phase(rows, name, "target sampler, 1 epoch", "sampling.random_epoch over the train split"):
        sampling.random_epoch(len(splits.train), 1, 0)
    steps = len(splits.train) // 32
    with Phase(rows, name, "target stream, 1 epoch", f"pipeline.target_stream, {steps} batches of 32 clips at 16×8"):
        epoch_of_stream(lambda: pipeline.target_stream(splits.train, batch_size=32, spec=tiny, seed=0, num_threads=2,
                                                       prefetch=2), steps)
    if not args.skip_pack:
        out_dir = os.path.join(root, "packed", name)
        shutil.rmtree(out_dir, ignore_errors=True)
        with Phase(rows, name, "pack", "data.pack.pack (array_record)"):
            directory = pack.pack(name, folder, out_dir, progress=False)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(directory) for f in fs)
        print(f"  {name}: packed {size / 2**20:.0f} MiB in {directory}", flush=True)
        with Phase(rows, name, "load packed", "data.pack.load_packed (metadata → Tracklets)"):
            pack.load_packed(directory)
        if not args.keep_packed:
            shutil.rmtree(out_dir, ignore_errors=True)
    if name == "mars":
        q_feat, g_feat = features_for(splits.query, splits.gallery, 2048, np.random.default_rng(0))
        inputs = evaluators.ProtocolInputs(
            query_features=q_feat, gallery_features=g_feat,
            query=splits.query, gallery=splits.gallery, distance=protocols.DistanceSpec("cosine"),
            options={"gallery": "exclude_query"})
        for attempt in ("first call", "second call"):
            with Phase(rows, name, f"evaluate ({attempt})", "evaluators 'mars': 3 galleries, D = 2048") as ph:
                results = evaluators.get("mars")(inputs)
                ph.note += "; " + ", ".join(f"{k} {len(v.num_good)}×" for k, v in results.items())
        summary = {k: f"R1 {100 * v.cmc[0]:.1f} mAP {100 * v.mAP:.1f}" for k, v in results.items()}
        print(f"  mars evaluation: {summary}", flush=True)
    del splits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="where the generated datasets live (kept for later runs)")
    p.add_argument("--datasets", default="mars,lsvid")
    p.add_argument("--fraction", type=float, default=1.0, help="scale every size by this (linearity check)")
    p.add_argument("--skip-pack", action="store_true")
    p.add_argument("--keep-packed", action="store_true")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    rows: list = []
    generated = {}
    for name in names:
        print(f"{name}: generating (once) under {args.root}/{name} …", flush=True)
        summary, seconds = ensure(name, args.root, args.fraction)
        generated[name] = (summary, seconds)
        print(f"  {summary}" + (f", generated in {seconds:.0f} s" if seconds else ", already there"), flush=True)
    for name in names:
        measure(name, args.root, rows, args)

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(f"# Scale rehearsal (fraction {args.fraction:g}): {platform.node()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; load average at the end {load}")
    for name, (summary, _) in generated.items():
        print(f"- {name}: {summary}")
    print()
    print("| dataset | phase | wall time | CPU time | peak RSS | rise | what |")
    print("|---|---|---|---|---|---|---|")
    for dataset, phase, seconds, cpu, peak, rise, note in rows:
        print(f"| {dataset} | {phase} | {seconds:.2f} s | {cpu:.2f} s | {peak / 2**30:.2f} GiB | +{rise / 2**20:.0f} MiB "
              f"| {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
