"""SVReID, SVReID-cc and SVReID+: the synthetic source sets (docs/DATASETS.md).

On disk (`root` is what the config names; the dataset folder is found under it):

    root/
      V3DGait_VIS/ or SVReID/        (or root itself, if it directly holds the list files)
        train_svreid.txt             (train_svreid_cc.txt for svreid_cc, train_svreid_plus.txt for svreid_plus)
        query.txt
        gallery.txt
        <tracklet dir>/<frames>.jpg  e.g. 0001/outfit1/3/00017.jpg (.jpeg and .png are read too); the leaf
                                     folder's name is the camera

Each list line is `<relative tracklet dir> <pid> <clothes label>`. The three names differ only in
the folder searched and the training list file.
"""
from __future__ import annotations

import os

from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

_FIELDS = ("relative tracklet dir", "pid", "clothes label")

# name → (dataset folders tried under root, in order; training list file). `svreid` looks for the
# folder name of the authors' HEAD first, then the earlier one.
_VARIANTS = {
    "svreid": (("V3DGait_VIS", "SVReID"), "train_svreid.txt"),
    "svreid_cc": (("SVReID",), "train_svreid_cc.txt"),
    "svreid_plus": (("SVReID",), "train_svreid_plus.txt"),
}


def _layout(folders: tuple[str, ...], train_list: str) -> str:
    return (f"  <root>/\n"
            f"    {' or '.join(f + '/' for f in folders)}   (or <root> itself)\n"
            f"      {train_list}, query.txt, gallery.txt   (lines: <tracklet dir> <pid> <clothes>)\n"
            f"      <tracklet dir>/*.jpg|jpeg|png   (the leaf folder name is the camera number)")


def _find_dataset_dir(root: str, name: str) -> str:
    """The folder under `root` that holds the list files (see the module docstring)."""
    folders, train_list = _VARIANTS[name]
    layout = _layout(folders, train_list)
    root = _common.require_root(root, name, layout)
    candidates = [os.path.join(root, f) for f in folders] + [root]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, train_list)):
            return folder
    raise DatasetError(f"{name}: missing training list {train_list}; looked in "
                       f"{', '.join(candidates)}; expected a folder laid out as\n{layout}")


def _read_list(path: str, name: str) -> list[tuple[int, str, str, str]]:
    """[(line number, tracklet dir, pid string, clothes label)] of one list file; pids must be ASCII digits."""
    _common.require_file(path, name, "list of '<tracklet dir> <pid> <clothes label>' lines")
    entries = []
    for lineno, (tracklet_dir, pid, clothes) in _common.read_fields(path, name, _FIELDS):
        _common.parse_id(pid, f"{path}, line {lineno}", name, "the pid (2nd field)")
        entries.append((lineno, tracklet_dir, pid, clothes))
    return entries


def _tracklet(dataset_dir: str, list_path: str, lineno: int, tracklet_dir: str, name: str,
              pid: int, clothes_id: int) -> Tracklet:
    where = f"{list_path}, line {lineno}"
    folder = _common.inside_root(dataset_dir, tracklet_dir, where, name, "the tracklet dir")
    leaf = os.path.basename(folder)
    camid = _common.parse_id(leaf, where, name, f"the camera (last folder of tracklet dir {tracklet_dir!r})")
    try:
        frames = _common.list_frames(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"{name}: {list_path}, line {lineno}: tracklet folder {folder} does not exist") from None
    if not frames:
        raise DatasetError(f"{name}: {list_path}, line {lineno}: tracklet folder {folder} holds no "
                           f"{'/'.join(_common.FRAME_EXTENSIONS)} frames")
    return Tracklet(frames=tuple(frames), pid=pid, camid=camid, clothes_id=clothes_id)


def load_variant(root: str, name: str) -> DatasetSplits:
    """Read one of the SVReID variants.

    Args:
      root: the folder that contains `V3DGait_VIS/` or `SVReID/` (or the dataset folder itself).
      name: 'svreid', 'svreid_cc' or 'svreid_plus' (selects the folder and training list).

    Returns DatasetSplits where
      * tracklet dirs: relative to the dataset folder and inside it (absolute paths or a '..' out of it
        are errors);
      * frames: every `*.jpg`, `*.jpeg` and `*.png` of `<dataset dir>/<tracklet dir>`, ordered numerically by the last
        integer in the file name (lexicographically when a name has none);
      * pid: ASCII digits; training pids relabelled 0..N-1 in sorted order of the pid *strings* (as the authors'
        code does); query/gallery keep int(pid);
      * camid: the leaf folder name of the tracklet dir (ASCII digits) as a number, **kept as written** (no −1). The synthetic
        sets number cameras in their folder names and the authors' code uses that number directly;
        only same-camera comparisons depend on it;
      * clothes_id: the string '<pid>_<clothes label>' mapped to 0..M-1 in sorted order; the training
        split has its own map, query and gallery share one map over their union.
    Errors: DatasetError naming the file and line (see _common).
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown SVReID variant {name!r}; expected one of {sorted(_VARIANTS)}")
    dataset_dir = _find_dataset_dir(root, name)
    train_path = os.path.join(dataset_dir, _VARIANTS[name][1])
    query_path = os.path.join(dataset_dir, "query.txt")
    gallery_path = os.path.join(dataset_dir, "gallery.txt")
    train, query, gallery = (_read_list(p, name) for p in (train_path, query_path, gallery_path))

    pid_map = _common.relabel(pid for _, _, pid, _ in train)
    train_clothes = _common.relabel(f"{pid}_{c}" for _, _, pid, c in train)
    test_clothes = _common.relabel(f"{pid}_{c}" for _, _, pid, c in query + gallery)

    def build(entries, path, pid_of, clothes_map):
        return tuple(_tracklet(dataset_dir, path, lineno, tdir, name, pid_of(pid), clothes_map[f"{pid}_{c}"])
                     for lineno, tdir, pid, c in entries)

    return DatasetSplits(
        train=build(train, train_path, pid_map.__getitem__, train_clothes),
        query=build(query, query_path, int, test_clothes),
        gallery=build(gallery, gallery_path, int, test_clothes),
    )


def load_svreid(root: str) -> DatasetSplits:
    """SVReID: `load_variant` with folder `V3DGait_VIS/` (then `SVReID/`), list `train_svreid.txt`."""
    return load_variant(root, "svreid")


def load_svreid_cc(root: str) -> DatasetSplits:
    """SVReID-cc: `load_variant` with folder `SVReID/`, training list `train_svreid_cc.txt`."""
    return load_variant(root, "svreid_cc")


def load_svreid_plus(root: str) -> DatasetSplits:
    """SVReID+: `load_variant` with folder `SVReID/`, training list `train_svreid_plus.txt`."""
    return load_variant(root, "svreid_plus")
