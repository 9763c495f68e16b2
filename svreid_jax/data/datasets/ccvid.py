"""CCVID (Gu et al., CVPR'22 "Clothes-Changing ReID with RGB only"; docs/DATASETS.md).

On disk (`root` is the folder that holds the list files; `<root>/CCVID/` and `<root>/image/` are
looked into too, for CAL's and the reference's layouts):

    root/
      train.txt, query.txt, gallery.txt    lines '<session>/<PPP>_<WW> <pid> <clothes code>',
                                           e.g. 'session3/001_01 001 u1_l1_s1_c1_b1'
      session1/001_01/*.jpg                the frames of a tracklet, in its folder
      ...

Conventions (the reference's, which are CAL's):
  * frames: the .jpg/.jpeg/.png files of the tracklet folder, ordered numerically by the last
    integer in the name;
  * tracklet dirs are relative to the list files' folder and must stay inside it (no absolute
    paths, no '..' out of it);
  * camid = WW (ASCII digits, the number after the first '_' of the folder name), plus 12 for session3, so
    sessions 1 and 2 share camera ids. **Kept as written** (no −1), like the reference. CCVID has
    no real camera ids (the source is a gait set), so same-camera junk on it is only a proxy;
  * pid: ASCII digits; training pids relabelled 0..N-1 in sorted order of the pid strings;
    query/gallery keep int(pid);
  * clothes_id: the string '<pid>_<clothes code>' mapped to 0..M-1 in sorted order; the training
    split has its own map, query and gallery share one map over their union.
"""
from __future__ import annotations

import os

from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

NAME = "ccvid"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SESSION3_CAMERA_OFFSET = 12
_FIELDS = ("<session>/<PPP>_<WW>", "pid", "clothes code")
_LISTS = ("train.txt", "query.txt", "gallery.txt")

_LAYOUT = """  <root>/   (or <root>/CCVID/, <root>/image/)
    train.txt, query.txt, gallery.txt   (lines: <session>/<PPP>_<WW> <pid> <clothes code>)
    <session>/<PPP>_<WW>/*.jpg          e.g. session1/001_01/00001.jpg"""


def _find_dataset_dir(root: str) -> str:
    root = _common.require_root(root, NAME, _LAYOUT)
    candidates = [root, os.path.join(root, "CCVID"), os.path.join(root, "image")]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "train.txt")):
            return folder
    raise DatasetError(f"{NAME}: missing training list train.txt; looked in {', '.join(candidates)}; "
                       f"expected a folder laid out as\n{_LAYOUT}")


def _read_list(path: str) -> list[tuple[int, str, str, str]]:
    """[(line number, tracklet dir, pid string, clothes code)]; pids must be ASCII digits."""
    _common.require_file(path, NAME, "list of '<session>/<PPP>_<WW> <pid> <clothes code>' lines")
    entries = []
    for lineno, (tracklet_dir, pid, clothes) in _common.read_fields(path, NAME, _FIELDS):
        _common.parse_id(pid, f"{path}, line {lineno}", NAME, "the pid (2nd field)")
        entries.append((lineno, tracklet_dir, pid, clothes))
    return entries


def camera(tracklet_dir: str, where: str) -> int:
    """WW of '<session>/<PPP>_<WW>', plus 12 for session3."""
    parts = tracklet_dir.strip("/").split("/")
    fields = parts[-1].split("_")
    if len(parts) < 2 or len(fields) < 2:
        raise DatasetError(f"{NAME}: {where}: tracklet dir {tracklet_dir!r} is not '<session>/<PPP>_<WW>' "
                           "with an integer WW")
    cam = _common.parse_id(fields[1], where, NAME, f"the camera WW of tracklet dir {tracklet_dir!r}")
    return cam + SESSION3_CAMERA_OFFSET if parts[-2] == "session3" else cam


def load_ccvid(root: str) -> DatasetSplits:
    """CCVID splits (CAL protocol lists); see the module docstring."""
    dataset_dir = _find_dataset_dir(root)
    paths = [os.path.join(dataset_dir, n) for n in _LISTS]
    train, query, gallery = (_read_list(p) for p in paths)
    pid_map = _common.relabel(pid for _, _, pid, _ in train)
    train_clothes = _common.relabel(f"{pid}_{c}" for _, _, pid, c in train)
    test_clothes = _common.relabel(f"{pid}_{c}" for _, _, pid, c in query + gallery)

    def build(entries, path, pid_of, clothes_map):
        out = []
        for lineno, tdir, pid, clothes in entries:
            where = f"{path}, line {lineno}"
            folder = _common.inside_root(dataset_dir, tdir, where, NAME, "tracklet dir")
            try:
                frames = _common.list_frames(folder, IMAGE_EXTENSIONS)
            except (FileNotFoundError, NotADirectoryError):
                raise DatasetError(f"{NAME}: {where}: tracklet folder {folder} does not exist") from None
            if not frames:
                raise DatasetError(f"{NAME}: {where}: tracklet folder {folder} holds no .jpg/.png frames")
            out.append(Tracklet(frames=tuple(frames), pid=pid_of(pid), camid=camera(tdir, where),
                                clothes_id=clothes_map[f"{pid}_{clothes}"]))
        return tuple(out)

    return DatasetSplits(
        train=build(train, paths[0], pid_map.__getitem__, train_clothes),
        query=build(query, paths[1], int, test_clothes),
        gallery=build(gallery, paths[2], int, test_clothes),
    )
