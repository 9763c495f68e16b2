"""Your own tracklets, one folder each: the layout for data that comes without list files.

On disk, either flat:

    root/
      <pid>/<camid>/<tracklet>/*.jpg|*.png    e.g. root/17/2/walk_a/000001.jpg

or split into sub-folders, each in that same layout (any of the three may be missing):

    root/
      train/<pid>/<camid>/<tracklet>/*.jpg
      query/<pid>/<camid>/<tracklet>/*.jpg
      gallery/<pid>/<camid>/<tracklet>/*.jpg

<pid> and <camid> are folder names of ASCII digits (leading zeros allowed); <tracklet> is any name. Hidden
entries (starting with '.') are ignored; any other file where a folder is expected, a folder
without sub-folders, or a tracklet folder without frames is an error.

Option `split` (which splits are filled, and from where):
  * 'auto' (default): the split layout fills each split from its sub-folder; the flat layout puts
    everything in `train` (unlabelled target data for adaptation);
  * 'train' / 'query' / 'gallery': only that split is filled, from `root/<split>/` in the split
    layout or from `root` itself in the flat layout;
  * 'all': the flat layout puts the same tracklets in all three splits (e.g. to extract features of
    everything); with the split layout it is the same as 'auto'.

Conventions: frames ordered numerically by the last integer in the file name; tracklets ordered by
(pid, camid, tracklet folder name in the same numeric-aware order); training pids relabelled
0..N-1 in sorted order, query/gallery pids and all camids kept as written; clothes_id None.
"""
from __future__ import annotations

import dataclasses
import os

from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

NAME = "folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "query", "gallery")
SPLIT_OPTIONS = ("auto", "train", "query", "gallery", "all")

_LAYOUT = """  <root>/<pid>/<camid>/<tracklet>/*.jpg|png        (flat: everything is training data)
  or <root>/{train,query,gallery}/<pid>/<camid>/<tracklet>/*.jpg|png"""


def _subfolders(folder: str, what: str) -> list[str]:
    """Names of the sub-folders, sorted numeric-aware; stray files or no sub-folders → DatasetError."""
    try:
        with os.scandir(folder) as entries:
            entries = [e for e in entries if not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"{NAME}: folder {folder} does not exist") from None
    files = sorted(e.name for e in entries if not e.is_dir())
    if files:
        raise DatasetError(f"{NAME}: {os.path.join(folder, files[0])} is a file; expected only {what} folders "
                           f"in {folder} (layout:\n{_LAYOUT})")
    if not entries:
        raise DatasetError(f"{NAME}: folder {folder} is empty; expected {what} folders (layout:\n{_LAYOUT})")
    return sorted((e.name for e in entries), key=_common.frame_sort_key)


def _integer(name: str, folder: str, what: str) -> int:
    return _common.parse_id(name, os.path.join(folder, name), NAME, f"the {what} folder name")


def _numbered(folder: str, what: str) -> list[tuple[int, str]]:
    """[(integer, folder name)] of the sub-folders, sorted; two names for one number → DatasetError."""
    numbered = sorted((_integer(n, folder, what), n) for n in _subfolders(folder, f"<{what}>"))
    for (a, name_a), (b, name_b) in zip(numbered, numbered[1:]):
        if a == b:
            raise DatasetError(f"{NAME}: {folder}: folders {name_a!r} and {name_b!r} are the same {what} {a}")
    return numbered


def _read_tree(base: str) -> list[Tracklet]:
    """All tracklets under base/<pid>/<camid>/<tracklet>/, raw pids."""
    out = []
    for pid, pid_name in _numbered(base, "pid"):
        pid_dir = os.path.join(base, pid_name)
        for camid, cam_name in _numbered(pid_dir, "camid"):
            cam_dir = os.path.join(pid_dir, cam_name)
            for tracklet in _subfolders(cam_dir, "<tracklet>"):
                folder = os.path.join(cam_dir, tracklet)
                frames = _common.list_frames(folder, IMAGE_EXTENSIONS)
                if not frames:
                    raise DatasetError(f"{NAME}: tracklet folder {folder} holds no .jpg/.png frames")
                out.append(Tracklet(frames=tuple(frames), pid=pid, camid=camid))
    return out


def load_folder(root: str, split: str = "auto") -> DatasetSplits:
    """Tracklets from `root/<pid>/<camid>/<tracklet>/` folders; see the module docstring for `split`."""
    if split not in SPLIT_OPTIONS:
        raise ValueError(f"{NAME}: split={split!r}; expected one of {', '.join(SPLIT_OPTIONS)}")
    root = _common.require_root(root, NAME, _LAYOUT)
    present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    trees: dict[str, list[Tracklet]] = {s: [] for s in SPLITS}
    if present:
        for s in present if split in ("auto", "all") else [split]:
            trees[s] = _read_tree(os.path.join(root, s))
    else:
        tracklets = _read_tree(root)
        for s in (SPLITS if split == "all" else ["train" if split == "auto" else split]):
            trees[s] = tracklets
    pid_map = _common.relabel(t.pid for t in trees["train"])
    return DatasetSplits(
        train=tuple(dataclasses.replace(t, pid=pid_map[t.pid]) for t in trees["train"]),
        query=tuple(trees["query"]),
        gallery=tuple(trees["gallery"]),
    )
