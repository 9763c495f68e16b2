"""`--mode=extract`: features of your own tracklets written as files, with the model restored from the
workdir's checkpoint (builders.restore_variables). The same features come from Python with
`svreid_jax.Embedder` (evaluation/embedder.py).

Files of `--mode=extract --data=<root>` (in `<workdir>/extract/`):

  features.npy     float32 [N, D], row i = tracklet i (BN-neck embedding, clip features averaged)
  index.csv        one row per tracklet: index, split, tracklet (its folder, relative to <root>), pid,
                   camid (both empty when the layout has none), num_frames, first_frame (absolute path)
  extract.json     checkpoint, clip settings, data root, N and D

Layouts under <root> (each also inside `train/`, `query/`, `gallery/` sub-folders, read in turn with
the split column saying which; otherwise that column is empty):

  <root>/<tracklet>/*.jpg|png                 plain: no pid or camera (chosen when the first folder
                                              under <root> holds frames itself)
  <root>/<pid>/<camid>/<tracklet>/*.jpg|png   the `folder` layout (data/datasets/folder.py); pids are
                                              the folder numbers as written (no relabelling)

Tracklets are ordered by folder name, numbers numerically; frames by the last number in their name.

The three files are written as one: into a hidden staging folder beside `extract/`, which then takes
its place (utils/atomic.py). So features.npy and index.csv always belong to the same run: a failed
or interrupted extraction leaves the previous three files as they were.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

from svreid_jax import builders, parallel
from svreid_jax.data import datasets
from svreid_jax.data.datasets import _common, folder
from svreid_jax.data.records import DatasetError, Tracklet
from svreid_jax.evaluation import features, protocols
from svreid_jax.utils import atomic

INDEX_COLUMNS = ("index", "split", "tracklet", "pid", "camid", "num_frames", "first_frame")


# ---------------------------------------------------------------------------------------------------------
# Your own tracklets


@dataclasses.dataclass(frozen=True)
class FolderTracklets:
    """Tracklets of a root with raw pids, and where each came from."""

    root: str
    tracklets: tuple[Tracklet, ...]
    splits: tuple[str, ...]  # '' (no split sub-folders) or 'train' / 'query' / 'gallery'
    # False: the plain layout, whose Tracklet.pid and camid (-1) stand for "none given".
    labelled: tuple[bool, ...] = ()


def read_folder(root: str) -> FolderTracklets:
    """Every tracklet under `root` (plain or `folder` layout, see the module docstring), once, pids as written."""
    root = os.path.abspath(os.path.expanduser(root))
    present = [s for s in folder.SPLITS if os.path.isdir(os.path.join(root, s))]
    tracklets, names, labelled = [], [], []
    for split in present or [""]:
        base = os.path.join(root, split) if split else root
        plain = _is_plain(base)
        # split='query' fills only the query split, whose pids are never relabelled.
        found = _read_plain(base) if plain else datasets.load("folder", base, split="query").query
        tracklets += found
        names += [split] * len(found)
        labelled += [not plain] * len(found)
    return FolderTracklets(root=root, tracklets=tuple(tracklets), splits=tuple(names), labelled=tuple(labelled))


def _tracklet_folders(base: str) -> list[str]:
    """The visible sub-folders of `base`, ordered by name (numbers numerically); [] if it cannot be listed."""
    try:
        with os.scandir(base) as entries:
            names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []  # the folder reader names the problem
    return sorted(names, key=_common.frame_sort_key)


def _is_plain(base: str) -> bool:
    """True when the first folder under `base` holds frames itself: <base>/<tracklet>/*.jpg."""
    names = _tracklet_folders(base)
    if not names:
        return False
    try:
        return bool(_common.frame_names(os.path.join(base, names[0]), folder.IMAGE_EXTENSIONS))
    except OSError:
        return False


def _read_plain(base: str) -> list[Tracklet]:
    tracklets = []
    names = _tracklet_folders(base)
    for name in names:
        path = os.path.join(base, name)
        frames = _common.list_frames(path, folder.IMAGE_EXTENSIONS)
        if not frames:
            raise DatasetError(f"extract: tracklet folder {path} holds no .jpg/.png frames (read as the plain layout "
                               f"<root>/<tracklet>/*.jpg, since {os.path.join(base, names[0])} holds frames)")
        tracklets.append(Tracklet(frames=tuple(frames), pid=-1, camid=-1))
    return tracklets


def index_rows(data: FolderTracklets) -> list[dict]:
    rows = []
    labelled = data.labelled or (True,) * len(data.tracklets)
    for i, (t, split, known) in enumerate(zip(data.tracklets, data.splits, labelled)):
        rows.append({"index": i, "split": split,
                     "tracklet": os.path.relpath(os.path.dirname(t.frames[0]), data.root).replace(os.sep, "/"),
                     "pid": t.pid if known else "", "camid": t.camid if known else "", "num_frames": len(t),
                     "first_frame": t.frames[0]})
    return rows


def extract_folder(config, model, variables, data_root: str, out_dir: str, mesh=None,
                   checkpoint: builders.CheckpointInfo | None = None) -> dict:
    """Write features.npy, index.csv and extract.json for the tracklets under `data_root` into `out_dir`, which
    is replaced whole (see the module docstring); return extract.json's dict."""
    data = read_folder(data_root)
    logging.info("extracting %d tracklets from %s", len(data.tracklets), data.root)
    start = time.perf_counter()
    feats = features.tracklet_features(config, model, variables, data.tracklets, mesh)
    seconds = time.perf_counter() - start
    info = {
        "data_root": data.root,
        "num_tracklets": int(feats.shape[0]),
        "feature_dim": int(feats.shape[1]),
        "checkpoint": dataclasses.asdict(checkpoint) if checkpoint else None,
        "clips": {"temporal": config.eval.temporal, "seq_len": config.eval.seq_len,
                  "height": config.data.height, "width": config.data.width,
                  "flip_average": bool(config.eval.flip_average)},
        "seconds": seconds,
        "tracklets_per_second": feats.shape[0] / max(seconds, 1e-9),
    }
    with protocols.writing(out_dir), atomic.replaced_directory(out_dir) as staging:
        np.save(os.path.join(staging, "features.npy"), feats.astype(np.float32))
        write_index(os.path.join(staging, "index.csv"), index_rows(data))
        with open(os.path.join(staging, "extract.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    return info


def write_index(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def run_extract(config, workdir: str, data_root: str) -> dict:
    """--mode=extract: restore the checkpoint of `workdir`, write `<workdir>/extract/`."""
    if not data_root:
        raise ValueError("--mode=extract needs --data=<folder of <tracklet>/ or <pid>/<camid>/<tracklet>/ "
                         "frame folders>")
    mesh = parallel.data_mesh()
    model, variables, info = builders.restore_variables(config, workdir, mesh)
    out_dir = os.path.join(workdir, "extract")
    result = extract_folder(config, model, variables, data_root, out_dir, mesh, checkpoint=info)
    print(f"wrote {result['num_tracklets']} × {result['feature_dim']} features to "
          f"{os.path.join(out_dir, 'features.npy')} and the index to {os.path.join(out_dir, 'index.csv')} "
          f"({result['tracklets_per_second']:.1f} tracklets/s)", flush=True)
    return result


__all__ = ["FolderTracklets", "extract_folder", "index_rows", "read_folder", "run_extract", "write_index"]
