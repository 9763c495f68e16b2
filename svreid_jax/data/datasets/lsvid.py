"""LS-VID (Li et al., ICCV'19; docs/DATASETS.md).

On disk (`root` is the LS-VID folder, or a folder holding `LS-VID/`):

    root/
      list_sequence/list_seq_train.txt   lines '<relative path prefix> <pid>', e.g.
      list_sequence/list_seq_test.txt      'tracklet_train/0001/0001_0001_3_ 1'
      test/data/info_test.mat            MATLAB v7.3 (HDF5), dataset 'query': 1-based rows of list_seq_test.txt
      tracklet_train/..., tracklet_test/...   the frames; a tracklet is every image whose path starts
                                              with its prefix (relative to root)

    The mirror layout `info/list_sequence/list_seq_{train,test}.txt` + `info/data/info_test.mat` is
    accepted too (frames still relative to root).

Conventions (as the reference code, except where noted):
  * frames: the image files (.jpg/.jpeg/.png) in the prefix's folder whose name starts with the
    prefix's last component, ordered **numerically** by the last integer in the file name (the
    reference sorts the names as strings; LS-VID's zero-padded names give the same order);
  * prefixes are relative to the dataset folder and must stay inside it (no absolute paths, no '..'
    out of it); pids are ASCII digits, or −1;
  * camid: the 3rd '_'-separated field (ASCII digits) of the first frame's basename, minus 1; it must be 1..15;
  * pid: training pids relabelled 0..N-1 in sorted order; query/gallery keep the raw pid;
  * rows with pid −1 (junk) are dropped from every split and counted (`load_with_stats`);
  * query = the rows named by `query` (in that order); gallery = the other test rows, in row order
    (the reference's choice; the official MATLAB protocol ranks against all test rows);
  * cut_length=None (default) keeps tracklets whole. cut_length=L reproduces the reference's
    cutting (it uses 48): a tracklet of n ≥ L frames becomes ⌊n/L⌋ consecutive pieces of L frames,
    the last piece also taking the remainder (L..2L−1 frames); shorter tracklets stay whole. It
    applies to **every** split, query and gallery included, and each piece is its own item
    (docs/METHOD.md §7.5). The reference's cached split_*.json files are never read.

Speed: each frame folder is listed once (the first time a prefix needs it); nothing is stat-ed
per frame.
"""
from __future__ import annotations

import bisect
import dataclasses
import os

import numpy as np

from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

NAME = "lsvid"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_JUNK_PID = -1
_FIELDS = ("relative path prefix", "pid")
_NUM_CAMERAS = 15

# (train list, test list, query .mat), relative to the dataset folder, per accepted layout.
_LAYOUTS = (
    ("list_sequence/list_seq_train.txt", "list_sequence/list_seq_test.txt", "test/data/info_test.mat"),
    ("info/list_sequence/list_seq_train.txt", "info/list_sequence/list_seq_test.txt", "info/data/info_test.mat"),
)

_LAYOUT = """  <root>/   (or <root>/LS-VID/)
    list_sequence/list_seq_train.txt, list_sequence/list_seq_test.txt   (lines: <path prefix> <pid>)
    test/data/info_test.mat   (MATLAB v7.3, dataset 'query': 1-based rows of list_seq_test.txt)
      (or info/list_sequence/... and info/data/info_test.mat)
    <path prefix>*.jpg   e.g. tracklet_train/0001/0001_0001_3_0001.jpg (3rd '_' field = camera 1..15)"""


@dataclasses.dataclass(frozen=True)
class LsvidStats:
    """What `load_with_stats` read and dropped (tracklet rows of the list files, before cutting)."""

    train_rows: int  # lines of list_seq_train.txt
    test_rows: int  # lines of list_seq_test.txt
    query_rows: int  # entries of `query`
    junk_train: int  # train rows with pid −1, dropped
    junk_test: int  # test rows with pid −1, dropped (from query and gallery)
    junk_query: int  # of those, how many `query` named
    cut_length: int | None  # the option; tracklet counts of the splits are after cutting


# ---------------------------------------------------------------------------------------------
# MATLAB files (shared with the iLIDS-VID reader)


# ---------------------------------------------------------------------------------------------
# Files


def _find_layout(root: str) -> tuple[str, str, str, str]:
    """(dataset dir, train list, test list, query .mat) of the first layout whose train list exists."""
    root = _common.require_root(root, NAME, _LAYOUT)
    tried = []
    for folder in (root, os.path.join(root, "LS-VID")):
        for train, test, mat in _LAYOUTS:
            paths = tuple(os.path.join(folder, p) for p in (train, test, mat))
            if os.path.isfile(paths[0]):
                return (folder,) + paths
            tried.append(paths[0])
    raise DatasetError(f"{NAME}: missing training list; looked for {', '.join(tried)}; "
                       f"expected a folder laid out as\n{_LAYOUT}")


def _read_list(path: str) -> list[tuple[int, str, int]]:
    """[(line number, prefix, pid)] of a list file."""
    _common.require_file(path, NAME, "list of '<path prefix> <pid>' lines")
    return [(lineno, prefix, _common.parse_id(pid, f"{path}, line {lineno}", NAME, "the pid (2nd field)",
                                              junk=_JUNK_PID))
            for lineno, (prefix, pid) in _common.read_fields(path, NAME, _FIELDS)]


def _read_query(path: str, num_test_rows: int) -> np.ndarray:
    """0-based test-row indices of the queries, in file order."""
    key = "query"
    raw = _common.read_mat_variable(path, key, NAME)
    if raw.ndim > 2 or (raw.ndim == 2 and min(raw.shape) > 1):
        raise DatasetError(f"{NAME}: {path}, variable {key!r}: expected a vector of test-row numbers, "
                           f"got shape {raw.shape}")
    idx = _common.whole_numbers(raw, path, key, NAME).reshape(-1)
    return _common.zero_based_rows(idx, num_test_rows, path, key, NAME, "a row of the test list")


class _PrefixListing:
    """Image files per folder, each folder listed once.

    A folder holds several tracklets (LS-VID: all of one identity), so a prefix's frames are found by
    bisection in the folder's names sorted as strings (they are contiguous there) and only they are put in
    temporal order: the work is linear in the frames, where filtering the whole folder for every prefix
    grew with tracklets × folder size (benchmarks/scale.py).
    """

    def __init__(self, dataset_dir: str):
        self._dir = dataset_dir
        self._cache: dict[str, list[str]] = {}

    def frames(self, prefix: str, where: str) -> list[str]:
        folder, stem = os.path.split(_common.inside_root(self._dir, prefix, where, NAME, "the path prefix"))
        if prefix.endswith(("/", os.sep)):  # a prefix naming a whole folder
            folder, stem = os.path.join(folder, stem), ""
        names = self._cache.get(folder)
        if names is None:
            try:
                names = sorted(_common.frame_names(folder, IMAGE_EXTENSIONS))
            except (FileNotFoundError, NotADirectoryError):
                raise DatasetError(f"{NAME}: {where}: frame folder {folder} does not exist") from None
            self._cache[folder] = names
        end = start = bisect.bisect_left(names, stem)
        while end < len(names) and names[end].startswith(stem):
            end += 1
        selected = names[start:end]
        if not _zero_padded(selected, stem):
            selected = sorted(selected, key=_common.frame_sort_key)
        base = os.path.join(folder, "")
        return [base + n for n in selected]


def _zero_padded(names: list[str], stem: str) -> bool:
    """True when `names` (sorted as strings) are already in temporal order: every name is the stem, then
    ASCII digits of one common width, then one common extension. The frame number is then the last integer
    of every name and the string order is its numeric order (frame_sort_key's), without parsing a name."""
    if not names or (stem and stem[-1].isdigit()):
        return False
    length = len(names[0])
    ext = os.path.splitext(names[0])[1]
    stop = length - len(ext)
    if stop <= len(stem) or any(c.isdigit() for c in ext):
        return False
    n = len(stem)
    return all(len(x) == length and x.endswith(ext) and x[n:stop].isascii() and x[n:stop].isdigit() for x in names)


def _camera(first_frame: str, where: str) -> int:
    fields = os.path.basename(first_frame).split("_")
    if len(fields) < 3:
        raise DatasetError(f"{NAME}: {where}: cannot read the camera from frame name "
                           f"{os.path.basename(first_frame)!r}; "
                           f"expected '_'-separated fields with the camera number (1..{_NUM_CAMERAS}) third")
    cam = _common.parse_id(fields[2], where, NAME, f"the camera (3rd '_' field of {os.path.basename(first_frame)!r})")
    if not 1 <= cam <= _NUM_CAMERAS:
        raise DatasetError(f"{NAME}: {where}: camera {cam} in frame name {os.path.basename(first_frame)!r} "
                           f"is outside 1..{_NUM_CAMERAS}")
    return cam - 1


def cut(frames: tuple[str, ...], cut_length: int | None) -> list[tuple[str, ...]]:
    """The reference's cutting (module docstring): pieces of cut_length, the last one keeping the rest."""
    if cut_length is None or len(frames) < cut_length:
        return [frames]
    pieces = len(frames) // cut_length
    return [frames[i * cut_length:(i + 1) * cut_length if i < pieces - 1 else len(frames)] for i in range(pieces)]


# ---------------------------------------------------------------------------------------------
# Entry points


def load_with_stats(root: str, cut_length: int | None = None) -> tuple[DatasetSplits, LsvidStats]:
    """Read LS-VID; also return the row counts and what was dropped.

    Args:
      root: the LS-VID folder (or one holding LS-VID/), see the module docstring.
      cut_length: None keeps tracklets whole; an int cuts every split as the reference does (48).
    """
    if cut_length is not None and (isinstance(cut_length, bool) or not isinstance(cut_length, int)
                                   or cut_length < 1):
        raise ValueError(f"{NAME}: cut_length={cut_length!r}; expected None or a positive integer "
                         "(the reference uses 48)")
    dataset_dir, train_path, test_path, mat_path = _find_layout(root)
    train_rows = _read_list(train_path)
    test_rows = _read_list(test_path)
    query_idx = _read_query(mat_path, len(test_rows))
    listing = _PrefixListing(dataset_dir)

    def tracklet(path, lineno, prefix, pid):
        where = f"{path}, line {lineno}"
        frames = listing.frames(prefix, where)
        if not frames:
            raise DatasetError(f"{NAME}: {where}: no image files start with prefix "
                               f"{os.path.join(dataset_dir, prefix)}")
        return Tracklet(frames=tuple(frames), pid=pid, camid=_camera(frames[0], where))

    train_all = [tracklet(train_path, *row) if row[2] != _JUNK_PID else None for row in train_rows]
    test_all = [tracklet(test_path, *row) if row[2] != _JUNK_PID else None for row in test_rows]

    pid_map = _common.relabel(t.pid for t in train_all if t is not None)

    def pieces(tracklets, relabel=False):
        out = []
        for t in tracklets:
            if t is None:
                continue
            pid = pid_map[t.pid] if relabel else t.pid
            out.extend(Tracklet(frames=p, pid=pid, camid=t.camid) for p in cut(t.frames, cut_length))
        return tuple(out)

    is_query = np.zeros(len(test_rows), bool)
    is_query[query_idx] = True
    splits = DatasetSplits(
        train=pieces(train_all, relabel=True),
        query=pieces(test_all[i] for i in query_idx.tolist()),
        gallery=pieces(t for t, q in zip(test_all, is_query.tolist()) if not q),
    )
    junk_test = {i for i, t in enumerate(test_all) if t is None}
    stats = LsvidStats(
        train_rows=len(train_rows), test_rows=len(test_rows), query_rows=len(query_idx),
        junk_train=sum(t is None for t in train_all), junk_test=len(junk_test),
        junk_query=sum(int(i) in junk_test for i in query_idx), cut_length=cut_length,
    )
    return splits, stats


def load_lsvid(root: str, cut_length: int | None = None) -> DatasetSplits:
    """LS-VID splits; see `load_with_stats` and the module docstring."""
    return load_with_stats(root, cut_length=cut_length)[0]
