"""Which tracklets form a batch, and which frames form a clip.

Everything here is a pure function of integers and a seed, so the same (seed, epoch) gives the same
order on every host, and resuming mid-epoch only needs the position in the stream.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])


def identity_epoch_length(pids: Sequence[int], num_instances: int) -> int:
    """Items per epoch of the P×K sampler: Σ_pid [max(n, K) − max(n, K) mod K] (docs/METHOD.md §2.4)."""
    _, counts = np.unique(np.asarray(pids), return_counts=True)
    padded = np.maximum(counts, num_instances)
    return int(np.sum(padded - padded % num_instances))


def identity_epoch(pids: Sequence[int], num_instances: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch of the P×K identity sampler, as tracklet indices.

    Reference semantics (RandomIdentitySampler): per pid, shuffle its tracklets (draw K with
    replacement when it has fewer than K), cut into groups of K dropping the remainder, shuffle
    the groups and concatenate. Consecutive runs of K items therefore share a pid, which the
    triplet and InfoNCE losses rely on; one pid may appear in two groups of a batch.

    Returns: int64 [identity_epoch_length(pids, K)].
    """
    pids = np.asarray(pids)
    rng = _rng(seed, epoch, 0x1D)
    groups = []
    for pid in np.unique(pids):
        members = np.flatnonzero(pids == pid)
        if len(members) < num_instances:
            members = rng.choice(members, size=num_instances, replace=True)
        else:
            members = rng.permutation(members)
        usable = len(members) - len(members) % num_instances
        groups.extend(members[:usable].reshape(-1, num_instances))
    if not groups:
        return np.zeros((0,), np.int64)
    order = rng.permutation(len(groups))
    return np.concatenate([groups[i] for i in order]).astype(np.int64)


def random_epoch(num_items: int, seed: int, epoch: int, views: int = 1) -> np.ndarray:
    """One epoch of label-free random sampling: a permutation of all tracklets, each index repeated
    `views` times in a row (so a batch holds several clips of one tracklet; they get their own
    temporal crops and flips downstream). int64 [num_items · views].
    """
    if views < 1:
        raise ValueError(f"views per tracklet must be ≥ 1, got {views}")
    return np.repeat(_rng(seed, epoch, 0x7A).permutation(num_items).astype(np.int64), views)


def _blocks(num_frames: int, seq_len: int) -> tuple[int, int]:
    """Padded length and block size of the reference's restricted crops."""
    length = max(num_frames, seq_len)
    return length, length // seq_len


def _pad_index(indices: np.ndarray, num_frames: int) -> np.ndarray:
    # Indices past the real end repeat the last frame (the reference pads short tracklets so).
    return np.minimum(indices, num_frames - 1)


def restricted_random(num_frames: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Train crop (TemporalRestrictedCrop): one random frame per block, the last block open-ended.

    Tracklets shorter than seq_len are padded with their last frame. Returns int [seq_len].
    """
    length, block = _blocks(num_frames, seq_len)
    starts = np.arange(seq_len) * block
    ends = np.append(starts[1:], length)  # the last block runs to the end
    picks = np.array([rng.integers(s, e) for s, e in zip(starts, ends)])
    return _pad_index(picks, num_frames)


def restricted_begin(num_frames: int, seq_len: int) -> np.ndarray:
    """Reference test crop (TemporalRestrictedBeginCrop): the first frame of each block. int [seq_len]."""
    length, block = _blocks(num_frames, seq_len)
    return _pad_index(np.arange(seq_len) * block, num_frames)


def evenly_spaced(num_frames: int, seq_len: int) -> np.ndarray:
    """seq_len frames spread evenly over the whole tracklet (short ones repeat frames). int [seq_len]."""
    if num_frames >= seq_len:
        return np.floor(np.arange(seq_len) * num_frames / seq_len).astype(np.int64)
    return _pad_index(np.arange(seq_len), num_frames)


def dense_chunks(num_frames: int, seq_len: int) -> np.ndarray:
    """All frames in consecutive chunks of seq_len, the last one loop-padded from the start.

    Returns int [num_chunks, seq_len].
    """
    num_chunks = -(-num_frames // seq_len)
    return (np.arange(num_chunks * seq_len) % num_frames).reshape(num_chunks, seq_len)


# The names data.train_temporal accepts (clip_indices), and eval.temporal (the same but restricted_random,
# plus dense: every frame, in chunks; pipeline.eval_clips).
TEMPORAL_METHODS = ("restricted_random", "restricted_begin", "evenly")
EVAL_TEMPORAL_METHODS = ("restricted_begin", "evenly", "dense")


def clip_indices(num_frames: int, seq_len: int, method: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Dispatch on the temporal sampling name used in configs."""
    if method == "restricted_random":
        if rng is None:
            raise ValueError("restricted_random sampling needs an rng")
        return restricted_random(num_frames, seq_len, rng)
    if method == "restricted_begin":
        return restricted_begin(num_frames, seq_len)
    if method == "evenly":
        return evenly_spaced(num_frames, seq_len)
    raise ValueError(
        f"unknown temporal sampling {method!r}; expected 'restricted_random', 'restricted_begin' or 'evenly'"
    )
