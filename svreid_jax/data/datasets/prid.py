"""PRID2011, multi-shot (Hirzer et al., SCIA'11; docs/DATASETS.md).

On disk (`root` is the folder holding `prid_2011/`, or a folder holding `prid2011/` with it):

    root/
      prid_2011/multi_shot/cam_a/person_0001/*.png   385 persons
      prid_2011/multi_shot/cam_b/person_0001/*.png   749 persons; person_0001..0200 are the same
                                                      people in both views, higher numbers are not
      splits_prid2011.json                           torchreid's format: a list of
                                                      {"train": [...], "test": [...]} person folder
                                                      names ("person_0001") or numbers (1)

Splits: `splits_prid2011.json` is read if present. If it is missing, the standard protocol is
generated and **saved** there (with a warning: numbers on generated splits are not comparable
with papers that used torchreid's file):
  * eligible persons: numbers 1..200 (the only ones seen by both cameras) whose folders exist in
    both views and hold at least MIN_FRAMES = 21 frames in each view. Wang et al. (ECCV'14) keep
    "sequences with more than 21 frames" and report 178 persons; whether their bound is inclusive
    is not settled by anything we could read, so we chose ≥ 21 and print the count
    (`python -m svreid_jax.data.check --dataset=prid`); compare it with 178;
  * 10 splits; split k shuffles the eligible persons (sorted by name) with
    numpy.random.default_rng(SPLIT_SEED).permutation, drawn 10 times in a row from one generator,
    and puts the first ⌊n/2⌋ in train, the rest in test (89/89 for 178).

Conventions:
  * train = cam_a then cam_b of each training person, in name order; query = cam_a of the test
    persons; gallery = cam_b of the test persons;
  * pid: training pids relabelled 0..N-1 in name order; query/gallery pids are the person number
    (person_0012 → 12). The reference numbers test persons within the split instead; the metrics
    are the same;
  * camid: 0 = cam_a, 1 = cam_b;
  * frames: ordered **numerically** by the last integer in the file name. The reference and
    torchreid keep glob's unsorted order (docs/DATASETS.md); we do not.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import logging

from svreid_jax.data.datasets import _common
from svreid_jax.data.datasets.ilidsvid import list_persons, person_number, raw_pids, read_frames
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet

NAME = "prid"
SPLITS_FILE = "splits_prid2011.json"
MIN_FRAMES = 21
NUM_SPLITS = 10
SPLIT_SEED = 0
SHARED_PERSONS = 200  # person_0001..0200 are the same people in both views
_CAMERAS = ("cam_a", "cam_b")

_LAYOUT = f"""  <root>/   (or <root>/prid2011/)
    prid_2011/multi_shot/cam_a/person_XXXX/*.png, prid_2011/multi_shot/cam_b/person_XXXX/*.png
    {SPLITS_FILE}   (optional: [{{"train": [person, ...], "test": [person, ...]}}, ...]; generated if missing)"""


@dataclasses.dataclass(frozen=True)
class PridStats:
    """Where the splits came from and how many persons the protocol leaves out."""

    generated: bool  # True if splits_prid2011.json was created by this call
    persons_cam_a: int  # person folders in cam_a
    persons_cam_b: int  # person folders in cam_b
    persons_in_split: int  # train + test persons of the chosen split
    too_short: int | None  # when generated: persons 1..200 of both views left out for < MIN_FRAMES frames


def _find_dataset_dir(root: str) -> str:
    root = _common.require_root(root, NAME, _LAYOUT)
    candidates = [root, os.path.join(root, "prid2011")]
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, "prid_2011", "multi_shot")):
            return folder
    raise DatasetError(f"{NAME}: missing folder prid_2011/multi_shot; looked in {', '.join(candidates)}; "
                       f"expected a folder laid out as\n{_LAYOUT}")


def _read_splits(path: str) -> list[tuple[list[str], list[str]]]:
    """torchreid's splits file as [(train folder names, test folder names)]; numbers become person_XXXX."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{NAME}: cannot read {path} as JSON ({e})") from None
    expected = "expected a list of {\"train\": [...], \"test\": [...]} objects"
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{NAME}: {path}: {expected}")
    out = []
    for k, split in enumerate(data):
        if not isinstance(split, dict) or not all(isinstance(split.get(s), list) for s in ("train", "test")):
            raise DatasetError(f"{NAME}: {path}, entry {k}: {expected}")
        names = {}
        for which in ("train", "test"):
            names[which] = []
            for j, person in enumerate(split[which]):
                if isinstance(person, int) and not isinstance(person, bool):
                    person = f"person_{person:04d}"
                if not isinstance(person, str):
                    raise DatasetError(f"{NAME}: {path}, entry {k}, key {which!r}, item {j}: expected a person "
                                       f"folder name or number, got {person!r}")
                names[which].append(person)
        out.append((names["train"], names["test"]))
    return out


def _generate_splits(cam_dirs: list[str], persons_a: list[str], persons_b: list[str]) -> tuple[list, int]:
    """The standard 10 splits (module docstring) and how many shared persons were too short."""
    both = sorted(set(persons_a) & set(persons_b))
    shared = [p for p in both if 1 <= person_number(p, cam_dirs[0], NAME) <= SHARED_PERSONS]
    eligible = [p for p in shared
                if all(len(read_frames(os.path.join(d, p), NAME)) >= MIN_FRAMES for d in cam_dirs)]
    if len(eligible) < 2:
        raise DatasetError(f"{NAME}: cannot generate {SPLITS_FILE}: only {len(eligible)} persons numbered "
                           f"1..{SHARED_PERSONS} have >= {MIN_FRAMES} frames in both {cam_dirs[0]} and {cam_dirs[1]}")
    rng = np.random.default_rng(SPLIT_SEED)
    splits = []
    for _ in range(NUM_SPLITS):
        order = [eligible[i] for i in rng.permutation(len(eligible))]
        half = len(eligible) // 2
        splits.append((sorted(order[:half]), sorted(order[half:])))
    return splits, len(shared) - len(eligible)


def _save_splits(path: str, splits: list[tuple[list[str], list[str]]]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump([{"train": tr, "test": te} for tr, te in splits], f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        logging.warning("%s: could not save the generated splits to %s (%s); they will be generated again "
                        "(identically) next time", NAME, path, e)


def load_with_stats(root: str, split_id: int = 0) -> tuple[DatasetSplits, PridStats]:
    """Read PRID2011 for one of the splits; also say where the splits came from (module docstring)."""
    if isinstance(split_id, bool) or not isinstance(split_id, int) or split_id < 0:
        raise ValueError(f"{NAME}: split_id={split_id!r}; expected an integer 0..9")
    dataset_dir = _find_dataset_dir(root)
    multi_shot = os.path.join(dataset_dir, "prid_2011", "multi_shot")
    cam_dirs = [os.path.join(multi_shot, c) for c in _CAMERAS]
    persons_a, persons_b = (list_persons(d, NAME) for d in cam_dirs)

    path = os.path.join(dataset_dir, SPLITS_FILE)
    too_short = None
    generated = not os.path.isfile(path)
    if generated:
        splits, too_short = _generate_splits(cam_dirs, persons_a, persons_b)
        _save_splits(path, splits)
        logging.warning("%s: %s was missing; generated %d splits of %d train / %d test persons (seed %d, >= %d "
                        "frames per view, %d persons left out as too short) and saved them there. Results on "
                        "these splits are not comparable with papers that used torchreid's file.", NAME, path,
                        NUM_SPLITS, len(splits[0][0]), len(splits[0][1]), SPLIT_SEED, MIN_FRAMES, too_short)
    else:
        splits = _read_splits(path)
    if split_id >= len(splits):
        raise DatasetError(f"{NAME}: {path} holds {len(splits)} splits; split_id={split_id} is not one of them")
    train, test = (sorted(names) for names in splits[split_id])
    for which, names in (("train", train), ("test", test)):
        for cam, present in zip(cam_dirs, (set(persons_a), set(persons_b))):
            missing = [n for n in names if n not in present]
            if missing:
                raise DatasetError(f"{NAME}: {path}, split {split_id}, key {which!r}: person {missing[0]!r} has no "
                                   f"folder in {cam}")
    if set(train) & set(test):
        raise DatasetError(f"{NAME}: {path}, split {split_id} puts person {sorted(set(train) & set(test))[0]!r} "
                           "in both train and test")

    def tracklet(person: str, cam: int, pid: int) -> Tracklet:
        return Tracklet(frames=read_frames(os.path.join(cam_dirs[cam], person), NAME), pid=pid, camid=cam)

    raw = raw_pids(test, cam_dirs[0], NAME)
    result = DatasetSplits(
        train=tuple(tracklet(p, cam, label) for label, p in enumerate(train) for cam in (0, 1)),
        query=tuple(tracklet(p, 0, raw[p]) for p in test),
        gallery=tuple(tracklet(p, 1, raw[p]) for p in test),
    )
    stats = PridStats(generated=generated, persons_cam_a=len(persons_a), persons_cam_b=len(persons_b),
                      persons_in_split=len(train) + len(test), too_short=too_short)
    return result, stats


def load_prid(root: str, split_id: int = 0) -> DatasetSplits:
    """PRID2011 splits; see `load_with_stats` and the module docstring."""
    return load_with_stats(root, split_id=split_id)[0]
