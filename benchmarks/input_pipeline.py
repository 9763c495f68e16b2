"""Input pipeline throughput: our grain pipeline vs a torch DataLoader + PIL doing the same work.

  python benchmarks/input_pipeline.py [--source_height=256 --source_width=128] [--height=256 --width=128]
                                      [--batches=30] [--repeats=3] [--threads=1,2] [--profile] [--draft]
                                      [--torch_simplejpeg]

The same work on both sides: P×K clips of 4 frames, each frame a JPEG read from disk, decoded,
resized bicubic to height×width (skipped by both when the sizes already match: PIL's resize of
an image to its own size is a copy), the clip flipped with probability 0.5, stacked to uint8
[B, T, H, W, 3]. Frames are photo-like JPEGs (smooth colour plus `--noise` grain, quality 90) of
source_height×source_width: 256×128 is MARS's stored size (no resize); 512×256 stands for
person crops from HD video (a 2× bicubic downscale).

Rows: ours with the PIL decoder (`decoder='pil'`) and with the default decoder (`'auto'`:
simplejpeg), with `--draft` also the DCT-scaled decode (different pixels), and torch
`DataLoader(num_workers=n)` with the same sampler and per-frame PIL code as before this change.
Each figure is the best of `--repeats` timings of `--batches` batches, so other jobs on a shared
machine cost as little as possible. frames/s per core = frames/s ÷ n (threads or workers);
frames per CPU-second counts the CPU time of this process and its worker processes, a figure that
contention changes less. Ratios compare with torch at the same n.
"""
import io
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from svreid_jax.data import decode, pipeline, sampling  # noqa: E402
from svreid_jax.data.records import Tracklet  # noqa: E402

flags.DEFINE_integer("num_identities", 40, "identities in the fake dataset")
flags.DEFINE_integer("tracklets_per_identity", 4, "tracklets per identity")
flags.DEFINE_integer("frames_per_tracklet", 24, "frames per tracklet")
flags.DEFINE_integer("source_height", 256, "stored JPEG height")
flags.DEFINE_integer("source_width", 128, "stored JPEG width")
flags.DEFINE_float("noise", 4.0, "std of the grain added to the frames (more grain: larger, slower JPEGs)")
flags.DEFINE_integer("height", 256, "output height")
flags.DEFINE_integer("width", 128, "output width")
flags.DEFINE_integer("batches", 30, "timed batches per repeat (after 3 warm-up batches)")
flags.DEFINE_integer("repeats", 3, "timings per configuration; the best is reported")
flags.DEFINE_list("threads", ["1", "2"], "thread / worker counts to measure")
flags.DEFINE_boolean("profile", False, "also print the per-frame cost of each host step")
flags.DEFINE_boolean("draft", False, "also measure decoder='auto' with draft=True (not bit-exact)")
flags.DEFINE_boolean("torch_simplejpeg", False,
                     "also measure the torch DataLoader decoding with simplejpeg (not the baseline)")
FLAGS = flags.FLAGS

P, K, T = 8, 4, 4


def photo(rng, height, width, noise=4.0):
    """Smooth colour regions plus sensor-like grain: JPEG sizes like real crops, unlike flat colour."""
    coarse = rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


def make_dataset(root, *, num_identities, tracklets_per_identity, frames_per_tracklet, height, width, noise=4.0,
                 seed=0):
    """Photo-like JPEG tracklets (quality 90) under `root`, camera k % 6 for the k-th of an identity.

    Returns (tracklets, mean JPEG size in bytes). benchmarks/gpu/run.py makes its data with this too.
    """
    rng = np.random.default_rng(seed)
    tracklets, sizes = [], []
    for pid in range(num_identities):
        for k in range(tracklets_per_identity):
            folder = os.path.join(root, f"{pid:04d}_{k}")
            os.makedirs(folder)
            frames = []
            for f in range(frames_per_tracklet):
                path = os.path.join(folder, f"{f:04d}.jpg")
                Image.fromarray(photo(rng, height, width, noise)).save(path, quality=90)
                sizes.append(os.path.getsize(path))
                frames.append(path)
            tracklets.append(Tracklet(tuple(frames), pid, k % 6))
    return tuple(tracklets), float(np.mean(sizes))


def _cpu_seconds():
    """CPU time of this process (all threads) and of its live child processes (DataLoader workers)."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def time_iterator(it, batches, repeats):
    """Best (frames/s, frames per CPU-second) over `repeats` timings of `batches` batches."""
    for _ in range(3):
        next(it)
    best = (0.0, 0.0)
    for _ in range(repeats):
        cpu, start = _cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            batch = next(it)
            video = batch["video"] if isinstance(batch, dict) else batch[0]
            assert tuple(video.shape) == (P * K, T, FLAGS.height, FLAGS.width, 3)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        frames = batches * P * K * T
        best = max(best, (frames / wall, frames / cpu))
    return best


def grain_fps(tracklets, threads, decoder, draft=False):
    spec = pipeline.ClipSpec(seq_len=T, height=FLAGS.height, width=FLAGS.width, decoder=decoder, draft=draft)
    it, _ = pipeline.source_stream(tracklets, num_identities=P, num_instances=K, spec=spec, seed=0,
                                   num_threads=threads, prefetch=8)
    return time_iterator(it, FLAGS.batches, FLAGS.repeats)


def _pil_frame(path):
    return np.asarray(Image.open(path).convert("RGB").resize((FLAGS.width, FLAGS.height), Image.BICUBIC))


def _simplejpeg_frame(path):
    import simplejpeg

    with open(path, "rb") as f:
        rgb = simplejpeg.decode_jpeg(f.read())
    return np.asarray(Image.fromarray(rgb).resize((FLAGS.width, FLAGS.height), Image.BICUBIC))


def torch_fps(tracklets, workers, load_frame=_pil_frame):
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler

    pids = [t.pid for t in tracklets]

    class Clips(Dataset):
        def __len__(self):
            return len(tracklets)

        def __getitem__(self, index):
            rng = np.random.default_rng(index)
            t = tracklets[index]
            idx = sampling.restricted_random(len(t), T, rng)
            clip = np.stack([load_frame(t.frames[i]) for i in idx])
            if rng.random() < 0.5:
                clip = clip[:, :, ::-1]
            return torch.from_numpy(np.ascontiguousarray(clip)), t.pid

    class PK(Sampler):
        def __iter__(self):
            epoch = 0
            while True:
                yield from sampling.identity_epoch(pids, K, 0, epoch).tolist()
                epoch += 1

    torch.set_num_threads(1)
    loader = DataLoader(Clips(), batch_size=P * K, sampler=PK(), num_workers=workers, drop_last=True,
                        prefetch_factor=4 if workers else None, persistent_workers=workers > 0)
    it = iter(loader)
    try:
        return time_iterator(it, FLAGS.batches, FLAGS.repeats)
    finally:
        del it, loader  # stop the workers before the next configuration is timed


def _best_us(fn, n=200, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def profile(path):
    """Per-frame cost (µs, best of 5) of each host step on one dataset frame."""
    h, w = FLAGS.height, FLAGS.width
    data = open(path, "rb").read()
    rows = [("read file", lambda: open(path, "rb").read())]

    def pil_decode():
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img

    rows.append(("PIL open + decode", pil_decode))
    img = pil_decode()
    rows.append(("PIL convert('RGB') (a copy for RGB)", lambda: img.convert("RGB")))
    resized = img.resize((w, h), Image.BICUBIC) if img.size != (w, h) else img
    if img.size != (w, h):
        rows.append(("PIL bicubic resize", lambda: img.resize((w, h), Image.BICUBIC)))

        def draft_decode():
            with Image.open(io.BytesIO(data)) as small:
                small.draft("RGB", (w, h))
                small.load()

        rows.append(("PIL open + draft decode (DCT-scaled)", draft_decode))
    rows.append(("np.asarray(PIL image)", lambda: np.asarray(resized)))
    frame = np.asarray(resized)
    rows.append(("numpy flip copy frame[:, ::-1]", lambda: np.ascontiguousarray(frame[:, ::-1])))
    rows.append(("PIL transpose(FLIP_LEFT_RIGHT)", lambda: resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    try:
        import simplejpeg

        out = np.empty_like(np.asarray(img.convert("RGB")))
        rows.append(("simplejpeg decode into buffer", lambda: simplejpeg.decode_jpeg(data, buffer=out)))
        bgr = simplejpeg.decode_jpeg(data, colorspace="BGR")
        flat = bgr.reshape(bgr.shape[0], -1)
        rows.append(("BGR row-byte reversal (flip)", lambda: np.ascontiguousarray(flat[:, ::-1])))
    except ImportError:
        pass
    clips = [np.empty((T, h, w, 3), np.uint8)] * (P * K)
    results = [(name, _best_us(fn)) for name, fn in rows]
    results.append(("grain's np.stack of 32 clips, per frame", _best_us(lambda: np.stack(clips), n=20) / (P * K * T)))
    for decoder in ("pil", "auto"):
        results.append((f"load_clip(decoder={decoder!r}, flip) per frame",
                        _best_us(lambda d=decoder: decode.load_clip([path], [0] * T, h, w, True, decoder=d),
                                 n=50) / T))
    return results


def main(argv):
    del argv
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as root:
        tracklets, mean_bytes = make_dataset(
            root, num_identities=FLAGS.num_identities, tracklets_per_identity=FLAGS.tracklets_per_identity,
            frames_per_tracklet=FLAGS.frames_per_tracklet, height=FLAGS.source_height, width=FLAGS.source_width,
            noise=FLAGS.noise)
        prof = profile(tracklets[0].frames[0]) if FLAGS.profile else []
        rows = []
        for n in map(int, FLAGS.threads):
            rows.append((f"ours, PIL decoder, {n} thread(s)", n, *grain_fps(tracklets, n, "pil")))
            rows.append((f"ours, default decoder (simplejpeg), {n} thread(s)", n, *grain_fps(tracklets, n, "auto")))
            if FLAGS.draft:
                rows.append((f"ours, simplejpeg + draft (pixels differ), {n} thread(s)", n,
                             *grain_fps(tracklets, n, "auto", draft=True)))
            if have_torch:
                rows.append((f"torch DataLoader + PIL, {n} worker(s)", n, *torch_fps(tracklets, n)))
                if FLAGS.torch_simplejpeg:
                    rows.append((f"(torch DataLoader + simplejpeg, {n} worker(s))", n,
                                 *torch_fps(tracklets, n, _simplejpeg_frame)))
    load_after = os.getloadavg()
    resize = ("no resize" if (FLAGS.source_height, FLAGS.source_width) == (FLAGS.height, FLAGS.width)
              else "bicubic resize")
    print(f"frames {FLAGS.source_height}x{FLAGS.source_width} JPEG (mean {mean_bytes / 1024:.1f} KiB) → "
          f"{FLAGS.height}x{FLAGS.width} ({resize}), batch {P}x{K} clips x {T} frames, {os.cpu_count()} CPUs, "
          f"best of {FLAGS.repeats} x {FLAGS.batches} batches; load average before {load[0]:.1f}, "
          f"after {load_after[0]:.1f}")
    if prof:
        print("| host step (one frame) | µs |\n|---|---|")
        for name, us in prof:
            print(f"| {name} | {us:.0f} |")
        print()
    torch_at = {n: (fps, cpu) for name, n, fps, cpu in rows if name.startswith("torch")}
    print("| configuration | frames/s | frames/s per core | frames per CPU-second | "
          "vs torch (frames/s) | vs torch (per CPU-second) |")
    print("|---|---|---|---|---|---|")
    for name, n, fps, cpu in rows:
        ref = torch_at.get(n)
        ratio = f"{fps / ref[0]:.2f}" if ref else "–"
        cpu_ratio = f"{cpu / ref[1]:.2f}" if ref else "–"
        print(f"| {name} | {fps:.0f} | {fps / n:.0f} | {cpu:.0f} | {ratio} | {cpu_ratio} |")


if __name__ == "__main__":
    app.run(main)
