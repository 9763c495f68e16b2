"""iLIDS-VID (Wang et al., ECCV'14; docs/DATASETS.md).

On disk (`root` is the folder holding `i-LIDS-VID/`, or a folder holding `ilids-vid/` with it):

    root/
      i-LIDS-VID/sequences/cam1/<person>/*.png    e.g. cam1/person001/cam1_person001_00317.png
      i-LIDS-VID/sequences/cam2/<person>/*.png    the same persons as cam1
      train-test people splits/train_test_splits_ilidsvid.mat   key ls_set, 10×300
      splits.json                                 optional, torchreid's format (see below)

Splits: row `split_id` of `ls_set` holds 1-based indices into the person folders sorted by name
(the order MATLAB's `dir` and torchreid use); the first half of the row are the test persons, the
second half the training persons (Wang et al., as torchreid reads it). If `splits.json` exists
and parses as torchreid's format — a list of {"train": [person folder names], "test": [...]} —
it is used instead, as torchreid and the reference do; a splits.json that does not parse is
ignored with a warning. Nothing is written.

Conventions:
  * train = cam1 then cam2 of each training person, persons in name order; query = cam1 of the
    test persons; gallery = cam2 of the test persons (both in name order);
  * pid: training pids relabelled 0..149 in name order; query/gallery pids are the number in the
    person folder name (person001 → 1). The reference numbers test persons 0..149 within the split
    instead; only pid equality matters for evaluation, so the metrics are the same;
  * camid: 0 = cam1, 1 = cam2;
  * frames: the .png (or .jpg) files of the folder, ordered **numerically** by the last integer in
    the name. The reference and torchreid keep glob's unsorted order (docs/DATASETS.md), so their
    "temporal" crops are effectively random frame subsets; ours are temporal.
"""
from __future__ import annotations

import json
import os

from absl import logging

from svreid_jax.data.datasets import _common
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

NAME = "ilidsvid"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_CAMERAS = ("cam1", "cam2")
_MAT = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")
_MAT_KEY = "ls_set"

_LAYOUT = """  <root>/   (or <root>/ilids-vid/)
    i-LIDS-VID/sequences/cam1/<person>/*.png, i-LIDS-VID/sequences/cam2/<person>/*.png
    train-test people splits/train_test_splits_ilidsvid.mat   (key ls_set, 10×300, 1-based person indices)
    splits.json   (optional: [{"train": [person, ...], "test": [person, ...]}, ...])"""


def _find_dataset_dir(root: str) -> str:
    root = _common.require_root(root, NAME, _LAYOUT)
    candidates = [root, os.path.join(root, "ilids-vid")]
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, "i-LIDS-VID", "sequences")):
            return folder
    raise DatasetError(f"{NAME}: missing folder i-LIDS-VID/sequences; looked in {', '.join(candidates)}; "
                       f"expected a folder laid out as\n{_LAYOUT}")


def list_persons(camera_dir: str, dataset: str) -> list[str]:
    """Sorted names of the person folders in a camera folder (hidden entries ignored)."""
    _common.require_dir(camera_dir, dataset, "one folder per person")
    with os.scandir(camera_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def person_number(name: str, folder: str, dataset: str) -> int:
    """The number its ASCII digits spell in a person folder name (person001 → 1, person_0012 → 12)."""
    digits = "".join(c for c in name if "0" <= c <= "9")
    if not digits:
        raise DatasetError(f"{dataset}: person folder {os.path.join(folder, name)} has no number in its name; "
                           "expected names like person001")
    return int(digits)


def raw_pids(names: list[str], folder: str, dataset: str) -> dict[str, int]:
    """person folder name → the number in it; two folders with the same number → DatasetError."""
    pids = {n: person_number(n, folder, dataset) for n in names}
    if len(set(pids.values())) != len(pids):
        seen: dict[int, str] = {}
        for n, p in pids.items():
            if p in seen:
                raise DatasetError(f"{dataset}: person folders {seen[p]!r} and {n!r} in {folder} carry the same "
                                   f"number {p}")
            seen[p] = n
    return pids


def read_frames(folder: str, dataset: str, extensions=IMAGE_EXTENSIONS) -> tuple[str, ...]:
    """The image files of a tracklet folder in numeric order; a DatasetError if there are none."""
    try:
        frames = _common.list_frames(folder, extensions)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"{dataset}: tracklet folder {folder} does not exist") from None
    if not frames:
        raise DatasetError(f"{dataset}: tracklet folder {folder} holds no {'/'.join(extensions)} frames")
    return tuple(frames)


def _splits_from_json(path: str) -> list[tuple[list, list]] | None:
    """torchreid's splits.json as [(train names, test names)], or None (with a warning) if it does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list) or not data:
            raise ValueError("expected a non-empty list of {'train': [...], 'test': [...]}")
        out = []
        for k, split in enumerate(data):
            if not isinstance(split, dict) or not all(isinstance(split.get(s), list) for s in ("train", "test")):
                raise ValueError(f"entry {k} is not a {{'train': [...], 'test': [...]}} object")
            if not all(isinstance(n, str) for n in split["train"] + split["test"]):
                raise ValueError(f"entry {k} lists something other than person folder names")
            out.append((split["train"], split["test"]))
        return out
    except (OSError, UnicodeDecodeError, ValueError) as e:
        logging.warning("%s: ignoring %s, which does not parse (%s); building the splits from the .mat file",
                        NAME, path, e)
        return None


def _split_from_mat(path: str, split_id: int, persons: list[str]) -> tuple[list[str], list[str]]:
    table = _common.whole_numbers(_common.read_mat_variable(path, _MAT_KEY, NAME), path, _MAT_KEY, NAME)
    if table.ndim != 2 or table.shape[1] % 2:
        raise DatasetError(f"{NAME}: {path}, variable {_MAT_KEY!r}: expected a 2-D matrix with one split per row "
                           f"and an even number of columns, got shape {table.shape}")
    if split_id >= table.shape[0]:
        raise DatasetError(f"{NAME}: {path}, variable {_MAT_KEY!r} has {table.shape[0]} splits; "
                           f"split_id={split_id} is not one of them")
    row = table[split_id]
    where = f"{path}, variable {_MAT_KEY!r}, row {split_id + 1}"
    bad = [int(v) for v in row if not 1 <= v <= len(persons)]
    if bad:
        raise DatasetError(f"{NAME}: {where}: {bad[0]} is not a person index; expected 1..{len(persons)} "
                           f"(the sorted person folders)")
    if len(set(row.tolist())) != len(row):
        raise DatasetError(f"{NAME}: {where}: a person index occurs twice")
    half = len(row) // 2
    test = sorted(persons[i - 1] for i in row[:half].tolist())
    train = sorted(persons[i - 1] for i in row[half:].tolist())
    return train, test


def load_ilidsvid(root: str, split_id: int = 0) -> DatasetSplits:
    """iLIDS-VID splits for one of the 10 train/test partitions; see the module docstring.

    Args:
      root: see the module docstring.
      split_id: which of the 10 partitions (0..9); the reference uses 0 only.
    """
    if isinstance(split_id, bool) or not isinstance(split_id, int) or split_id < 0:
        raise ValueError(f"{NAME}: split_id={split_id!r}; expected an integer 0..9")
    dataset_dir = _find_dataset_dir(root)
    sequences = os.path.join(dataset_dir, "i-LIDS-VID", "sequences")
    cam_dirs = [os.path.join(sequences, c) for c in _CAMERAS]
    persons = list_persons(cam_dirs[0], NAME)
    cam2 = list_persons(cam_dirs[1], NAME)
    if persons != cam2:
        only1 = sorted(set(persons) - set(cam2))
        only2 = sorted(set(cam2) - set(persons))
        raise DatasetError(f"{NAME}: {cam_dirs[0]} and {cam_dirs[1]} must hold the same person folders; "
                           f"only in cam1: {only1[:5]}, only in cam2: {only2[:5]}")

    json_path = os.path.join(dataset_dir, "splits.json")
    mat_path = os.path.join(dataset_dir, _MAT)
    from_json = _splits_from_json(json_path) if os.path.isfile(json_path) else None
    if from_json is not None:
        if split_id >= len(from_json):
            raise DatasetError(f"{NAME}: {json_path} holds {len(from_json)} splits; "
                               f"split_id={split_id} is not one of them")
        train, test = (sorted(names) for names in from_json[split_id])
        known = set(persons)
        for which, names in (("train", train), ("test", test)):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise DatasetError(f"{NAME}: {json_path}, split {split_id}, key {which!r}: person {unknown[0]!r} "
                                   f"has no folder in {cam_dirs[0]}")
    else:
        train, test = _split_from_mat(mat_path, split_id, persons)
    if set(train) & set(test):
        raise DatasetError(f"{NAME}: split {split_id} puts person {sorted(set(train) & set(test))[0]!r} in both "
                           f"train and test ({json_path if from_json is not None else mat_path})")

    def tracklet(person: str, cam: int, pid: int) -> Tracklet:
        return Tracklet(frames=read_frames(os.path.join(cam_dirs[cam], person), NAME), pid=pid, camid=cam)

    raw = raw_pids(test, cam_dirs[0], NAME)
    train_split = tuple(tracklet(p, cam, label) for label, p in enumerate(train) for cam in (0, 1))
    query = tuple(tracklet(p, 0, raw[p]) for p in test)
    gallery = tuple(tracklet(p, 1, raw[p]) for p in test)
    return DatasetSplits(train=train_split, query=query, gallery=gallery)
