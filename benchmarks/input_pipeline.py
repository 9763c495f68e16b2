"""Input pipeline throughput: our grain pipeline vs a torch DataLoader + PIL doing the same work.

  python benchmarks/input_pipeline.py [--frames_per_tracklet=24] [--height=256 --width=128] [--batches=30]

The same work on both sides: P×K clips of 4 frames, each frame a JPEG decoded with PIL, resized
bicubic to height×width, the clip flipped with probability 0.5, stacked to uint8 [B, T, H, W, 3].
Frames are written once as 128×64 JPEGs of random content (MARS frames are 256×128 at source;
here the resize does real work either way). Prints frames/s per configuration and, when torch is
installed, the grain/torch ratio at the same thread/worker count.
"""
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from svreid_jax.data import pipeline, sampling, transforms  # noqa: E402
from svreid_jax.data.records import Tracklet  # noqa: E402

flags.DEFINE_integer("num_identities", 40, "identities in the fake dataset")
flags.DEFINE_integer("tracklets_per_identity", 4, "tracklets per identity")
flags.DEFINE_integer("frames_per_tracklet", 24, "frames per tracklet")
flags.DEFINE_integer("source_height", 128, "stored JPEG height")
flags.DEFINE_integer("source_width", 64, "stored JPEG width")
flags.DEFINE_integer("height", 256, "output height")
flags.DEFINE_integer("width", 128, "output width")
flags.DEFINE_integer("batches", 30, "timed batches per configuration (after 3 warm-up batches)")
flags.DEFINE_list("threads", ["1", "2"], "thread / worker counts to measure")
FLAGS = flags.FLAGS

P, K, T = 8, 4, 4


def make_dataset(root):
    rng = np.random.default_rng(0)
    tracklets = []
    for pid in range(FLAGS.num_identities):
        for k in range(FLAGS.tracklets_per_identity):
            folder = os.path.join(root, f"{pid:04d}_{k}")
            os.makedirs(folder)
            frames = []
            for f in range(FLAGS.frames_per_tracklet):
                # Smooth random content compresses like a photo, unlike white noise.
                small = rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((FLAGS.source_width, FLAGS.source_height), Image.BILINEAR)
                path = os.path.join(folder, f"{f:04d}.jpg")
                img.save(path, quality=90)
                frames.append(path)
            tracklets.append(Tracklet(tuple(frames), pid, k % 6))
    return tuple(tracklets)


def time_iterator(it, batches):
    for _ in range(3):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        video = batch["video"] if isinstance(batch, dict) else batch[0]
        assert tuple(video.shape) == (P * K, T, FLAGS.height, FLAGS.width, 3)
    return batches * P * K * T / (time.perf_counter() - start)


def grain_fps(tracklets, threads):
    spec = pipeline.ClipSpec(seq_len=T, height=FLAGS.height, width=FLAGS.width)
    it, _ = pipeline.source_stream(tracklets, num_identities=P, num_instances=K, spec=spec, seed=0,
                                   num_threads=threads, prefetch=8)
    return time_iterator(it, FLAGS.batches)


def torch_fps(tracklets, workers):
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
            frames = [np.asarray(Image.open(t.frames[i]).convert("RGB").resize((FLAGS.width, FLAGS.height),
                                                                                Image.BICUBIC)) for i in idx]
            clip = np.stack(frames)
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
    return time_iterator(iter(loader), FLAGS.batches)


def main(argv):
    del argv
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    with tempfile.TemporaryDirectory() as root:
        tracklets = make_dataset(root)
        rows = []
        for n in map(int, FLAGS.threads):
            ours = grain_fps(tracklets, n)
            theirs = torch_fps(tracklets, n) if have_torch else float("nan")
            rows.append((n, ours, theirs))
    print(f"frames {FLAGS.source_height}x{FLAGS.source_width} JPEG → {FLAGS.height}x{FLAGS.width}, "
          f"batch {P}x{K} clips x {T} frames, {os.cpu_count()} CPUs")
    print("| threads / workers | grain frames/s | torch DataLoader frames/s | ratio |")
    print("|---|---|---|---|")
    for n, ours, theirs in rows:
        print(f"| {n} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    app.run(main)
