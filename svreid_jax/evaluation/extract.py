"""`--mode=extract`: features of your own tracklets (the `folder` layout) written as files, with the
model restored from the workdir's checkpoint (builders.restore_variables).

Files of `--mode=extract --data=<root>` (in `<workdir>/extract/`):

  features.npy     float32 [N, D], row i = tracklet i (BN-neck embedding, clip features averaged)
  index.csv        one row per tracklet: index, split, tracklet (its folder, relative to <root>), pid,
                   camid, num_frames, first_frame (absolute path)
  extract.json     checkpoint, clip settings, data root, N and D

Both folder layouts are read (`data/datasets/folder.py`): flat `<root>/<pid>/<camid>/<tracklet>/` (split
column empty) or `<root>/{train,query,gallery}/...` (each split in turn). pids are the folder numbers as
written (no relabelling).
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
from svreid_jax.data.datasets import folder
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import features

INDEX_COLUMNS = ("index", "split", "tracklet", "pid", "camid", "num_frames", "first_frame")


# ---------------------------------------------------------------------------------------------------------
# Your own tracklets


@dataclasses.dataclass(frozen=True)
class FolderTracklets:
    """Tracklets of a `folder` root with raw pids, and where each came from."""

    root: str
    tracklets: tuple[Tracklet, ...]
    splits: tuple[str, ...]  # '' (flat layout) or 'train' / 'query' / 'gallery'


def read_folder(root: str) -> FolderTracklets:
    """Every tracklet under a `folder`-layout root, once, with the pids as written."""
    root = os.path.abspath(os.path.expanduser(root))
    present = [s for s in folder.SPLITS if os.path.isdir(os.path.join(root, s))]
    tracklets, names = [], []
    # split='query' fills only the query split, whose pids are never relabelled.
    for split in present or [""]:
        found = datasets.load("folder", os.path.join(root, split) if split else root, split="query").query
        tracklets += found
        names += [split] * len(found)
    return FolderTracklets(root=root, tracklets=tuple(tracklets), splits=tuple(names))


def index_rows(data: FolderTracklets) -> list[dict]:
    rows = []
    for i, (t, split) in enumerate(zip(data.tracklets, data.splits)):
        rows.append({"index": i, "split": split,
                     "tracklet": os.path.relpath(os.path.dirname(t.frames[0]), data.root).replace(os.sep, "/"),
                     "pid": t.pid, "camid": t.camid, "num_frames": len(t), "first_frame": t.frames[0]})
    return rows


def extract_folder(config, model, variables, data_root: str, out_dir: str, mesh=None,
                   checkpoint: builders.CheckpointInfo | None = None) -> dict:
    """Write features.npy, index.csv and extract.json for the tracklets under `data_root`; return extract.json's dict."""
    data = read_folder(data_root)
    logging.info("extracting %d tracklets from %s", len(data.tracklets), data.root)
    start = time.perf_counter()
    feats = features.tracklet_features(config, model, variables, data.tracklets, mesh)
    seconds = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "features.npy"), feats.astype(np.float32))
    with open(os.path.join(out_dir, "index.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(index_rows(data))
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
    with open(os.path.join(out_dir, "extract.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info


def run_extract(config, workdir: str, data_root: str) -> dict:
    """--mode=extract: restore the checkpoint of `workdir`, write `<workdir>/extract/`."""
    if not data_root:
        raise ValueError("--mode=extract needs --data=<folder of <pid>/<camid>/<tracklet>/ frames>")
    mesh = parallel.data_mesh()
    model, variables, info = builders.restore_variables(config, workdir, mesh)
    out_dir = os.path.join(workdir, "extract")
    result = extract_folder(config, model, variables, data_root, out_dir, mesh, checkpoint=info)
    print(f"wrote {result['num_tracklets']} × {result['feature_dim']} features to "
          f"{os.path.join(out_dir, 'features.npy')} and the index to {os.path.join(out_dir, 'index.csv')} "
          f"({result['tracklets_per_second']:.1f} tracklets/s)", flush=True)
    return result


__all__ = ["FolderTracklets", "extract_folder", "index_rows", "read_folder", "run_extract"]
