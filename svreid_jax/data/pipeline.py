"""grain input pipelines: P×K source batches, label-free target batches, evaluation clips.

A training stream is a grain `MapDataset` over *positions* 0, 1, 2, …: position i is the i-th item
of the endless concatenation of sampler epochs (epoch = i // items_per_epoch). So the iterator
state is one integer, resuming is exact, and every process can compute any position. Decoding,
resizing and flipping run in grain threads; batches are uint8 `[B, T, H, W, 3]`. A frame that cannot be
decoded stops the stream with a records.FrameError naming the file, or with `ClipSpec.skip_bad_frames`
is replaced and counted (the batch's 'bad_frames').

`tracklets` is a sequence of records.Tracklet read from folders, or a `pack.PackedTracklets`
(packed array_record shards), whose frames decode from the stored bytes to the same pixels.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from svreid_jax.data import decode, pack, sampling
from svreid_jax.data.records import DatasetError, FrameError, Tracklet

# Streams are long but finite so grain can index them; 2**40 positions never run out.
_STREAM_LENGTH = 2**40


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from a tracklet and how frames are prepared."""

    seq_len: int = 4
    height: int = 256
    width: int = 128
    temporal: str = "restricted_random"  # see sampling.clip_indices
    flip: bool = True  # random horizontal flip, one decision per clip
    decoder: str = "auto"  # decode.DECODERS: 'auto' (simplejpeg for JPEGs when installed), 'pil', 'simplejpeg'
    draft: bool = False  # JPEG DCT-scaled decode when downscaling ≥2× (faster, pixels differ slightly)
    skip_bad_frames: bool = False  # a frame that cannot be decoded is replaced and counted instead of failing


class _EpochStream:
    """Random-access view of an endless sampler: position → tracklet index.

    `epoch_fn(epoch)` returns one epoch of tracklet indices. Each process reads its own slice of
    every global batch, so a local batch of `local_batch` items is position range
    [step·global + process·local, … + local) of the global stream.
    """

    def __init__(self, epoch_fn: Callable[[int], np.ndarray], items_per_epoch: int,
                 global_batch: int, process_index: int, process_count: int):
        if items_per_epoch < global_batch:
            raise ValueError(
                f"an epoch holds {items_per_epoch} items, fewer than one global batch of {global_batch}; "
                "use a smaller batch or more data"
            )
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self._epoch_fn = epoch_fn
        # Whole batches per epoch: a batch never straddles two sampler epochs.
        self.batches_per_epoch = items_per_epoch // global_batch
        self._global = global_batch
        self._local = global_batch // process_count
        self._process = process_index
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return _STREAM_LENGTH

    def __getstate__(self):
        # Worker processes get a copy without the lock and cache (neither pickles nor needs to).
        state = self.__dict__.copy()
        del state["_lock"]
        state["_cache"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _epoch(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._cache.get(epoch)
            if order is None:
                order = self._epoch_fn(epoch)
                self._cache = {e: o for e, o in self._cache.items() if e >= epoch - 1}
                self._cache[epoch] = order
            return order

    def __getitem__(self, position: int) -> tuple[int, int]:
        step, offset = divmod(int(position), self._local)
        global_position = step * self._global + self._process * self._local + offset
        epoch, batch_in_epoch = divmod(step, self.batches_per_epoch)
        within = batch_in_epoch * self._global + self._process * self._local + offset
        return int(self._epoch(epoch)[within]), global_position


def _decode_clip(tracklets: Sequence[Tracklet], index: int, frame_indices, spec: ClipSpec,
                 flip: bool, out: np.ndarray | None = None) -> np.ndarray:
    """Frames of tracklets[index] as uint8 [T, H, W, 3] (written into `out` when given): from its
    files, or from the stored bytes of a `pack.PackedTracklets` (same decoding, so the same pixels)."""
    kw = dict(decoder=spec.decoder, draft=spec.draft, out=out)
    if isinstance(tracklets, (pack.PackedTracklets, pack.JoinedTracklets)):
        return tracklets.load_clip(index, frame_indices, spec.height, spec.width, flip, **kw)
    return decode.load_clip(tracklets[index].frames, frame_indices, spec.height, spec.width, flip, **kw)


_warned_frames: set[str] = set()
_warned_lock = threading.Lock()


def _decode_clip_or_skip(tracklets: Sequence[Tracklet], index: int, frame_indices, spec: ClipSpec,
                         flip: bool, out: np.ndarray) -> int:
    """`_decode_clip` into `out`; returns how many of its frames could not be decoded.

    A bad frame raises records.FrameError (naming the file) unless `spec.skip_bad_frames`: then it is
    replaced by the nearest good frame of the same clip (earlier first; black if none decodes), a
    warning names it once per run, and it is counted, so a long run on a dataset with a few broken
    files goes on and says how many it met.
    """
    try:
        _decode_clip(tracklets, index, frame_indices, spec, flip, out=out)
        return 0
    except FrameError:
        if not spec.skip_bad_frames:
            raise
    good, bad = [], []
    for t, i in enumerate(frame_indices):
        try:
            _decode_clip(tracklets, index, [i], spec, flip, out=out[t:t + 1])
            good.append(t)
        except FrameError as err:
            bad.append(t)
            with _warned_lock:
                first = err.path not in _warned_frames
                _warned_frames.add(err.path)
            if first:
                logging.warning("skipping a bad frame (data.skip_bad_frames): %s", err)
    for t in bad:
        if good:
            out[t] = out[min(good, key=lambda g: (abs(g - t), g > t))]
        else:
            out[t] = 0
    return len(bad)


class _LoadTrainBatch(grain.transforms.Map):
    """Samples, decodes and flips the clips of one batch, straight into the batch buffer.

    Decoding per batch rather than per clip saves grain's stacking copy of every clip. A clip's
    randomness comes from (seed, global stream position), not grain's per-process index, so a
    multi-process run draws exactly the augmentations of a single-process run.
    """

    def __init__(self, tracklets: Sequence[Tracklet], spec: ClipSpec, seed: int):
        self._tracklets = tracklets
        self._spec = spec
        self._seed = seed

    def map(self, element):
        """element: (tracklet index, global position), each int [B]."""
        indices, positions = element
        spec = self._spec
        video = np.empty((len(indices), spec.seq_len, spec.height, spec.width, 3), np.uint8)
        pid = np.empty(len(indices), np.int32)
        camid = np.empty(len(indices), np.int32)
        bad_frames = 0
        for b, (index, global_position) in enumerate(zip(indices.tolist(), positions.tolist())):
            rng = np.random.default_rng([self._seed & 0xFFFFFFFF, global_position])
            tracklet = self._tracklets[index]
            frames = sampling.clip_indices(len(tracklet), spec.seq_len, spec.temporal, rng)
            flip = bool(spec.flip and rng.random() < 0.5)
            bad_frames += _decode_clip_or_skip(self._tracklets, index, frames, spec, flip, out=video[b])
            pid[b], camid[b] = tracklet.pid, tracklet.camid
        return {"video": video, "pid": pid, "camid": camid, "index": np.asarray(indices, np.int32),
                "bad_frames": np.int32(bad_frames)}


def _train_iterator(tracklets, stream: _EpochStream, batch_size: int, spec: ClipSpec, seed: int,
                    num_threads: int, prefetch: int, num_workers: int = 0) -> grain.DatasetIterator:
    ds = (
        grain.MapDataset.source(stream)
        .batch(batch_size, drop_remainder=True)
        .map(_LoadTrainBatch(tracklets, spec, seed))
    )
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    iter_ds = ds.to_iter_dataset(options)
    if num_workers > 0:
        # Worker processes sidestep the GIL for decoding on many-core hosts (TPU VMs); on a few cores
        # threads are faster (docs/METHOD.md §10.3), hence 0 by default. The state still checkpoints.
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_ds)


def _check_nonempty(tracklets: Sequence[Tracklet], what: str) -> None:
    # A DatasetError, so the command line says it in one line; datasets.require_split names the list file.
    if not tracklets:
        raise DatasetError(f"the {what} split holds no tracklets; check the dataset root and its lists")


def source_stream(tracklets: Sequence[Tracklet], *, num_identities: int, num_instances: int, spec: ClipSpec,
                  seed: int, num_threads: int = 2, prefetch: int = 4, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0) -> tuple[grain.DatasetIterator, int]:
    """P×K identity batches of the labelled source.

    Returns (iterator of {'video': uint8 [b,T,H,W,3], 'pid','camid','index': int32 [b]}, steps per
    epoch), where b = P·K / process_count is this process's share of the global batch.
    """
    _check_nonempty(tracklets, "source train")
    pids = [t.pid for t in tracklets]
    global_batch = num_identities * num_instances
    local = global_batch // max(process_count, 1)
    if local % num_instances:
        raise ValueError(f"each process's batch ({local}) must hold whole groups of K={num_instances}")
    stream = _EpochStream(
        lambda epoch: sampling.identity_epoch(pids, num_instances, seed, epoch),
        sampling.identity_epoch_length(pids, num_instances), global_batch, process_index, process_count,
    )
    return (_train_iterator(tracklets, stream, local, spec, seed, num_threads, prefetch, num_workers),
            stream.batches_per_epoch)


def target_stream(tracklets: Sequence[Tracklet], *, batch_size: int, spec: ClipSpec, seed: int,
                  num_threads: int = 2, prefetch: int = 4, process_index: int = 0,
                  process_count: int = 1, identity_balanced: bool = False,
                  num_instances: int = 4, num_workers: int = 0, views_per_tracklet: int = 1) -> grain.DatasetIterator:
    """Target batches. Label-free random tracklets by default (the unsupervised setting).

    views_per_tracklet > 1 puts that many clips of each drawn tracklet next to each other in the batch
    (independent temporal crops and flips): positives known without labels, because a tracklet is
    one person. batch_size must be a multiple of it.
    identity_balanced=True reproduces the reference's P×K sampling by *target ground-truth* pids
    (docs/METHOD.md §8 D7); it uses target labels and the caller should say so.
    """
    _check_nonempty(tracklets, "target train")
    if views_per_tracklet > 1 and (identity_balanced or batch_size % views_per_tracklet):
        raise ValueError(f"data.target_views={views_per_tracklet} needs label-free target sampling and a "
                         f"target batch ({batch_size}) that is a multiple of it")
    if identity_balanced:
        pids = [t.pid for t in tracklets]
        epoch_fn = lambda epoch: sampling.identity_epoch(pids, num_instances, seed + 1, epoch)  # noqa: E731
        items = sampling.identity_epoch_length(pids, num_instances)
    else:
        epoch_fn = lambda epoch: sampling.random_epoch(len(tracklets), seed + 1, epoch,  # noqa: E731
                                                       views_per_tracklet)
        items = len(tracklets) * views_per_tracklet
    stream = _EpochStream(epoch_fn, items, batch_size, process_index, process_count)
    return _train_iterator(tracklets, stream, batch_size // max(process_count, 1), spec, seed + 1,
                           num_threads, prefetch, num_workers)


class _LoadEvalClip(grain.transforms.Map):
    def __init__(self, tracklets: Sequence[Tracklet], spec: ClipSpec):
        self._tracklets = tracklets
        self._spec = spec

    def map(self, element):
        tracklet_index, frame_indices = element
        spec = self._spec
        if tracklet_index < 0:  # padding of the last batch
            return {
                "video": np.zeros((spec.seq_len, spec.height, spec.width, 3), np.uint8),
                "tracklet": np.int32(-1),
            }
        video = np.empty((len(frame_indices), spec.height, spec.width, 3), np.uint8)
        _decode_clip_or_skip(self._tracklets, tracklet_index, frame_indices, spec, False, out=video)
        return {"video": video, "tracklet": np.int32(tracklet_index)}


def eval_clips(tracklets: Sequence[Tracklet], *, spec: ClipSpec, batch_size: int, method: str = "restricted_begin",
               num_threads: int = 2) -> Iterator[dict]:
    """Deterministic evaluation clips, in fixed-size batches (the last one padded).

    method: 'restricted_begin' (reference: one 4-frame clip), 'evenly' (one clip of seq_len evenly
    spaced frames) or 'dense' (all frames in chunks of seq_len; a tracklet gives several clips).
    Yields {'video': uint8 [batch_size, T, H, W, 3], 'tracklet': int32 [batch_size]} where
    tracklet = -1 marks padding. Average the clip features per tracklet index.
    """
    items: list[tuple[int, np.ndarray]] = []
    for i, tracklet in enumerate(tracklets):
        if method == "dense":
            items.extend((i, chunk) for chunk in sampling.dense_chunks(len(tracklet), spec.seq_len))
        else:
            items.append((i, sampling.clip_indices(len(tracklet), spec.seq_len, method)))
    pad = (-len(items)) % batch_size
    items.extend([(-1, np.zeros(spec.seq_len, np.int64))] * pad)
    # Clips, not batches, are what the threads decode: grain keeps at most prefetch_buffer_size items in
    # flight, so batch-level reading used min(num_threads, buffer) threads. Two batches of clips ahead.
    ds = grain.MapDataset.source(items).map(_LoadEvalClip(tracklets, spec))
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, num_threads))
    return iter(ds.to_iter_dataset(read).batch(batch_size))


class DevicePrefetch:
    """Wraps a batch iterator so that `size` batches beyond the one handed out are already on device.

    Each call to next() tops the queue up to size + 1 batches, each placed with `place_fn` (a
    `device_put` / `make_array_from_process_local_data`, which dispatch asynchronously), and hands
    out the oldest; so the transfers of batches n+1 … n+size overlap step n. size=0 places each
    batch on demand.

    Checkpoints must not count batches that were prefetched but never trained on: every queued
    batch keeps the wrapped iterator's state as of right after it was read, and get_state() returns
    the state after the last batch handed out. set_state() drops the queue. States have the wrapped
    iterator's own format, so a checkpoint taken with and without prefetching is interchangeable.
    """

    def __init__(self, iterator, size: int, place_fn: Callable[[Any], Any]):
        if size < 0:
            raise ValueError(f"device prefetch size must be ≥ 0, got {size}")
        self._iterator = iterator
        self._size = size
        self._place = place_fn
        self._queue: collections.deque = collections.deque()
        self._consumed_state = None  # None: nothing handed out since the wrapped iterator's state

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._queue) <= self._size:
            batch = next(self._iterator)
            self._queue.append((self._place(batch), self._iterator.get_state()))
        placed, self._consumed_state = self._queue.popleft()
        return placed

    def get_state(self):
        """The wrapped iterator's state after the last batch returned by next()."""
        if self._consumed_state is None:
            # Nothing read ahead yet (the queue fills only inside next()).
            return self._iterator.get_state()
        return self._consumed_state

    def set_state(self, state) -> None:
        self._queue.clear()
        self._iterator.set_state(state)
        self._consumed_state = None

    def start_prefetch(self) -> None:
        # grain's checkpoint handler calls this after set_state; pass it on to grain's threads.
        start = getattr(self._iterator, "start_prefetch", None)
        if start is not None:
            start()


def prefetch_to_device(iterator, size: int, place_fn: Callable[[Any], Any]) -> DevicePrefetch:
    """`DevicePrefetch(iterator, size, place_fn)`: keeps `size` placed batches ahead (0 = none)."""
    return DevicePrefetch(iterator, size, place_fn)
