"""The records every reader returns and every pipeline consumes."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple


@dataclasses.dataclass(frozen=True)
class Tracklet:
    """One tracklet: an ordered sequence of frame files of one person in one camera.

    frames: absolute paths of the frame images, in temporal order.
    pid: identity label. Training splits are relabelled to 0..N-1; query/gallery keep raw pids.
    camid: 0-based camera index.
    clothes_id: outfit index for clothes-aware datasets, else None.
    """

    frames: tuple[str, ...]
    pid: int
    camid: int
    clothes_id: int | None = None

    def __len__(self) -> int:
        return len(self.frames)


class DatasetSplits(NamedTuple):
    """The three splits of a re-ID dataset, each a tuple of Tracklet."""

    train: tuple[Tracklet, ...]
    query: tuple[Tracklet, ...]
    gallery: tuple[Tracklet, ...]

    @property
    def num_train_pids(self) -> int:
        return len({t.pid for t in self.train})


class DatasetError(ValueError):
    """Bad or missing dataset files. The message names the file (and line or key) and what was expected."""


class FrameError(DatasetError, OSError):
    """A frame that cannot be read or decoded (missing, empty, truncated, not an image); the message
    names the file. An OSError too, as decoding errors were before it existed."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class MissingFrameError(FrameError, FileNotFoundError):
    """A frame file the dataset index lists but the disk does not hold."""
