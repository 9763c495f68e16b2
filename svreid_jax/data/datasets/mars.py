"""MARS (docs/DATASETS.md).

On disk:

    root/
      info/train_name.txt          one frame name per line, e.g. 0001C1T0001F001.jpg
      info/test_name.txt
      info/tracks_train_info.mat   key track_train_info: rows [start, end, pid, cam]; start/end are
                                   1-based inclusive line numbers into train_name.txt, cam is 1..6
      info/tracks_test_info.mat    key track_test_info, the same for the test names
      info/query_IDX.mat           key query_IDX: 1-based row numbers of track_test_info
      bbox_train/<first 4 chars of the name>/<name>
      bbox_test/<first 4 chars of the name>/<name>

Conventions: frame names are bare file names (no '/'); pids are −1, 0 or positive: rows with pid −1 ("junk") are dropped everywhere and counted (`load_with_stats`);
pid 0 (distractors) is kept in the test splits; camid = cam − 1; training pids are relabelled
0..N-1 in sorted order; test pids stay raw. Three gallery conventions circulate (docs/METHOD.md §7.4) and are the `gallery` option.

Speed: real MARS lists ~1.2M frame names. Frames are never stat-ed one by one: with
`check_frames=True` (default) each bbox sub-folder that a kept tracklet uses is listed once
(the first time a tracklet needs it) and every frame name is looked up in that listing; with
`check_frames=False` nothing under bbox_* is touched beyond the two top folders.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

NAME = "mars"
GALLERY_MODES = ("exclude_query", "include_query", "all")
_JUNK_PID = -1

_LAYOUT = """  <root>/
    info/train_name.txt, info/test_name.txt           (one frame name per line)
    info/tracks_train_info.mat  (key track_train_info, rows [start, end, pid, cam], 1-based)
    info/tracks_test_info.mat   (key track_test_info)
    info/query_IDX.mat          (key query_IDX, 1-based rows of track_test_info)
    bbox_train/<pid4>/<name>.jpg   e.g. bbox_train/0001/0001C1T0001F001.jpg
    bbox_test/<pid4>/<name>.jpg"""


@dataclasses.dataclass(frozen=True)
class MarsStats:
    """What `load_with_stats` read and dropped (tracklet counts)."""

    train_rows: int  # rows of track_train_info
    test_rows: int  # rows of track_test_info
    query_rows: int  # entries of query_IDX
    junk_train: int  # train rows with pid −1, dropped
    junk_test: int  # test rows with pid −1, dropped (from query and gallery)
    junk_query: int  # of those, how many query_IDX named (so the query split is shorter by this)
    distractors: int  # test rows with pid 0, kept


# ---------------------------------------------------------------------------------------------
# Files


def _read_names(path: str) -> list[str]:
    """Frame names of train_name.txt / test_name.txt; line i (1-based) is name index i."""
    _common.require_file(path, NAME, "one frame name per line")
    lines = [line.strip() for line in _common.read_lines(path, NAME)]
    while lines and not lines[-1]:
        lines.pop()  # a trailing newline or two is harmless
    for lineno, line in enumerate(lines, start=1):
        if not line:
            # A blank line would shift every later index that the .mat rows point at.
            raise DatasetError(f"{NAME}: {path}, line {lineno} is empty; expected one frame name per line")
        if "/" in line or os.sep in line or line in (".", ".."):
            # The name is joined under bbox_*/<first 4 characters>/: a path here could reach any file.
            raise DatasetError(f"{NAME}: {path}, line {lineno}: {line!r} is not a file name; expected a bare "
                               "frame name like 0001C1T0001F001.jpg")
    return lines


def _read_tracks(path: str, key: str, num_names: int, names_path: str) -> np.ndarray:
    """[N, 4] int64 rows [start, end, pid, cam], checked against the name list."""
    rows = _common.whole_numbers(_common.read_mat_variable(path, key, NAME), path, key, NAME)
    if rows.size == 0:
        rows = rows.reshape(0, 4)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise DatasetError(f"{NAME}: {path}, variable {key!r}: expected an N×4 matrix of "
                           f"[start, end, pid, cam] rows, got shape {rows.shape}")
    start, end, pid, cam = rows.T
    bad = np.flatnonzero((start < 1) | (end < start) | (end > num_names) | (cam < 1) | (pid < _JUNK_PID))
    if bad.size:
        r = int(bad[0])
        raise DatasetError(
            f"{NAME}: {path}, variable {key!r}, row {r + 1}: {rows[r].tolist()} is not a valid "
            f"[start, end, pid, cam]; expected 1 <= start <= end <= {num_names} (lines of {names_path}), "
            f"pid >= -1 (-1 junk, 0 distractor) and cam >= 1")
    return rows


def _read_query_index(path: str, num_test_rows: int) -> np.ndarray:
    """0-based test-row indices of the queries, in file order."""
    key = "query_IDX"
    idx = _common.whole_numbers(_common.read_mat_variable(path, key, NAME), path, key, NAME).reshape(-1)
    return _common.zero_based_rows(idx, num_test_rows, path, key, NAME, "a row of track_test_info")


# ---------------------------------------------------------------------------------------------
# Tracklets


class _FolderListing:
    """Each bbox sub-folder listed once, on first use (see the module docstring)."""

    def __init__(self, bbox_dir: str):
        self._bbox_dir = bbox_dir
        self._cache: dict[str, frozenset[str]] = {}

    def names(self, prefix: str, where: str) -> frozenset[str]:
        listing = self._cache.get(prefix)
        if listing is None:
            folder = os.path.join(self._bbox_dir, prefix)
            try:
                listing = frozenset(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                raise DatasetError(f"{NAME}: {where}: frame folder {folder} does not exist") from None
            self._cache[prefix] = listing
        return listing


def _tracklets(rows: np.ndarray, names: list[str], names_path: str, tracks_path: str, key: str,
               bbox_dir: str, check_frames: bool) -> list[Tracklet | None]:
    """One Tracklet per row with raw pid and camid = cam − 1; None for junk (pid −1) rows."""
    listing = _FolderListing(bbox_dir)
    out: list[Tracklet | None] = []
    for r, (start, end, pid, cam) in enumerate(rows.tolist()):
        if pid == _JUNK_PID:
            out.append(None)
            continue
        where = f"{tracks_path}, variable {key!r}, row {r + 1}"
        frames = names[start - 1:end]
        prefix = frames[0][:4]
        try:
            consistent = all(n[:4] == prefix for n in frames) and len({n[5] for n in frames}) == 1
        except IndexError:
            consistent = False
        if not consistent:
            raise DatasetError(
                f"{NAME}: {where}: frames {names_path} lines {start}..{end} ({frames[0]} … {frames[-1]}) do not all "
                f"share the 4-character pid prefix and the camera character (index 5)")
        if check_frames:
            present = listing.names(prefix, where)
            for i, n in enumerate(frames):
                if n not in present:
                    raise DatasetError(f"{NAME}: {names_path}, line {start + i}: frame "
                                       f"{os.path.join(bbox_dir, prefix, n)} is missing (used by {where})")
        folder = os.path.join(bbox_dir, prefix) + os.sep
        out.append(Tracklet(frames=tuple(folder + n for n in frames), pid=int(pid), camid=int(cam) - 1))
    return out


# ---------------------------------------------------------------------------------------------
# Entry points


def load_with_stats(root: str, gallery: str = "exclude_query",
                    check_frames: bool = True) -> tuple[DatasetSplits, MarsStats]:
    """Read MARS; also return what was read and dropped.

    Args:
      root: the folder holding info/, bbox_train/ and bbox_test/.
      gallery: which gallery convention (docs/METHOD.md §7.4):
        'exclude_query' (reference code / torchreid): the test rows not in query_IDX, in row order;
        'include_query' (AP3D / CAL style): that gallery followed by the query tracklets;
        'all' (official MATLAB): every test row, in row order (the same set as 'include_query').
      check_frames: look every frame name up in its folder's listing (one listdir per folder).

    Returns (DatasetSplits, MarsStats). Junk rows (pid −1) are dropped from every split.
    """
    if gallery not in GALLERY_MODES:
        raise ValueError(f"mars: gallery={gallery!r}; expected one of {', '.join(GALLERY_MODES)}")
    root = _common.require_root(root, NAME, _LAYOUT)
    info = os.path.join(root, "info")
    _common.require_dir(info, NAME, "expected info/ with the name lists and .mat files")
    bbox_train = _common.require_dir(os.path.join(root, "bbox_train"), NAME, "training frames, bbox_train/<pid4>/")
    bbox_test = _common.require_dir(os.path.join(root, "bbox_test"), NAME, "test frames, bbox_test/<pid4>/")

    train_names_path = os.path.join(info, "train_name.txt")
    test_names_path = os.path.join(info, "test_name.txt")
    train_tracks_path = os.path.join(info, "tracks_train_info.mat")
    test_tracks_path = os.path.join(info, "tracks_test_info.mat")
    query_path = os.path.join(info, "query_IDX.mat")

    train_names = _read_names(train_names_path)
    test_names = _read_names(test_names_path)
    train_rows = _read_tracks(train_tracks_path, "track_train_info", len(train_names), train_names_path)
    test_rows = _read_tracks(test_tracks_path, "track_test_info", len(test_names), test_names_path)
    query_idx = _read_query_index(query_path, len(test_rows))

    train_all = _tracklets(train_rows, train_names, train_names_path, train_tracks_path, "track_train_info",
                           bbox_train, check_frames)
    test_all = _tracklets(test_rows, test_names, test_names_path, test_tracks_path, "track_test_info",
                          bbox_test, check_frames)

    kept_train = [t for t in train_all if t is not None]
    pid_map = _common.relabel(t.pid for t in kept_train)
    train = tuple(dataclasses.replace(t, pid=pid_map[t.pid]) for t in kept_train)

    is_query = np.zeros(len(test_rows), bool)
    is_query[query_idx] = True
    query = tuple(test_all[i] for i in query_idx.tolist() if test_all[i] is not None)
    non_query = tuple(t for t, q in zip(test_all, is_query.tolist()) if t is not None and not q)
    everything = tuple(t for t in test_all if t is not None)
    gallery_split = {"exclude_query": non_query, "include_query": non_query + query, "all": everything}[gallery]

    stats = MarsStats(
        train_rows=len(train_rows), test_rows=len(test_rows), query_rows=len(query_idx),
        junk_train=int(np.sum(train_rows[:, 2] == _JUNK_PID)),
        junk_test=int(np.sum(test_rows[:, 2] == _JUNK_PID)),
        junk_query=int(np.sum(test_rows[query_idx, 2] == _JUNK_PID)),
        distractors=int(np.sum(test_rows[:, 2] == 0)),
    )
    return DatasetSplits(train=train, query=query, gallery=gallery_split), stats


def load_mars(root: str, gallery: str = "exclude_query", check_frames: bool = True) -> DatasetSplits:
    """MARS splits; see `load_with_stats` for the options and the counts of dropped rows."""
    return load_with_stats(root, gallery=gallery, check_frames=check_frames)[0]
