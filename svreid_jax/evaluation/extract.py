"""Checkpoint → model and variables, tracklet features with the config's evaluation clips, and
`--mode=extract`: features of your own tracklets (the `folder` layout) written as files.

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
from collections.abc import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from svreid_jax import steps
from svreid_jax.data import datasets
from svreid_jax.data.datasets import folder
from svreid_jax.data.records import DatasetSplits, Tracklet
from svreid_jax.evaluation import features

CHECKPOINT_CHOICES = ("auto", "latest", "best")
INDEX_COLUMNS = ("index", "split", "tracklet", "pid", "camid", "num_frames", "first_frame")


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    directory: str  # the orbax manager directory (<workdir>/checkpoints or <workdir>/best), or a baseline file
    step: int  # -1 for an authors' checkpoint (model.init_from)
    teacher: bool  # the EMA teacher's variables were taken


def checkpoint_directory(workdir: str, which: str = "auto") -> str:
    """<workdir>/best (model selection's pick) or <workdir>/checkpoints (the latest state).

    which: 'auto' — best/ when it holds a checkpoint (what train_and_evaluate reports), else checkpoints/;
    'latest' — checkpoints/; 'best' — best/.
    """
    if which not in CHECKPOINT_CHOICES:
        raise ValueError(f"eval.checkpoint={which!r}; expected one of {CHECKPOINT_CHOICES}")
    best, latest = os.path.join(workdir, "best"), os.path.join(workdir, "checkpoints")
    if which == "best" or (which == "auto" and _has_step(best)):
        return best
    return latest


def _has_step(directory: str) -> bool:
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def restore_variables(config, workdir: str, mesh=None) -> tuple[object, dict, CheckpointInfo]:
    """(model, {'params', 'batch_stats'}, info) from the checkpoint `config.eval.checkpoint` picks.

    The train state is restored as saved (no optimiser is built, no training data is read); the number of
    classes comes from the saved classifier. If `config.model.init_from` names one of the authors' student
    checkpoints (a `.pth(.tar)` with the BN-neck `bn.*` and `classifier.*`, or its `.npz`), that file is
    converted on the fly (interop.baseline) and evaluated instead of the workdir's checkpoint. With `config.eval.use_teacher` the EMA teacher is returned.
    Variables are replicated over `mesh` (default: all devices).
    """
    from svreid_jax import train  # train imports this module

    if config.model.init_from:
        baseline = _baseline_student(config)
        if baseline is not None:
            return _baseline_variables(config, baseline, mesh)
    directory = checkpoint_directory(workdir, config.eval.checkpoint)
    if not _has_step(directory):
        raise FileNotFoundError(f"no checkpoint under {directory}; train first (--mode=train) with this --workdir")
    manager = ocp.CheckpointManager(os.path.abspath(directory))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    teacher = bool(config.eval.use_teacher)
    params = state["ema_params"] if teacher else state["params"]
    batch_stats = state["ema_batch_stats"] if teacher else state["batch_stats"]
    num_classes = int(np.shape(params["classifier"]["kernel"])[-1])
    model = train.create_model(config, num_classes)
    mesh = steps.data_mesh() if mesh is None else mesh
    variables = steps.replicate({"params": params, "batch_stats": batch_stats}, mesh)
    logging.info("restored %s step %d (%s, %d source classes)", directory, step,
                 "EMA teacher" if teacher else "student", num_classes)
    return model, variables, CheckpointInfo(directory=directory, step=int(step), teacher=teacher)


def _baseline_student(config) -> dict | None:
    """The authors' student state_dict named by model.init_from, or None if the file is not one (e.g.
    ImageNet weights, which only initialise training)."""
    from svreid_jax.interop import baseline

    state_dict = baseline.read_baseline_checkpoint(config.model.init_from,
                                                   allow_pickle=config.model.init_from_allow_pickle)
    if "classifier.weight" not in state_dict or "bn.weight" not in state_dict:
        return None
    return state_dict


def _baseline_variables(config, state_dict: dict, mesh) -> tuple[object, dict, CheckpointInfo]:
    """(model, variables, info) for an authors' student state_dict, on the model the config describes."""
    from svreid_jax import train
    from svreid_jax.interop import baseline
    from svreid_jax.models import reid

    path = config.model.init_from
    arch = baseline.infer_arch(state_dict)
    if arch != config.model.arch:
        raise ValueError(f"{path} holds a {arch!r} network but config.model.arch={config.model.arch!r}; "
                         f"use configs/<target>.py:reference (sinet) or --config.model.arch={arch}")
    num_classes = int(np.shape(state_dict["classifier.weight"])[0])
    model = train.create_model(config, num_classes)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0),
                                          (1, config.eval.seq_len, config.data.height, config.data.width, 3))
    # The InfoNCE projection is a training head: drop it when this model has none.
    drop = () if "projection" in params else ("projection",)
    params, batch_stats = baseline.load_baseline_checkpoint(state_dict, params, batch_stats, drop=drop)
    mesh = steps.data_mesh() if mesh is None else mesh
    variables = steps.replicate({"params": params, "batch_stats": batch_stats}, mesh)
    logging.info("evaluating the authors' checkpoint %s (%s, %d source classes), converted", path, arch, num_classes)
    return model, variables, CheckpointInfo(directory=os.path.abspath(path), step=-1, teacher=False)


# ---------------------------------------------------------------------------------------------------------
# Features

def tracklet_features(config, model, variables, tracklets: Sequence[Tracklet], mesh=None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """float32 [N, D] features of `tracklets` with the config's evaluation clips (eval.temporal, seq_len,
    batch_size, flip_average; data.height/width)."""
    from svreid_jax import train

    mesh = steps.data_mesh() if mesh is None else mesh
    return features.extract(steps.make_embed_step(model), variables, tracklets, spec=train.clip_spec(config, train=False),
                            batch_size=config.eval.batch_size, method=config.eval.temporal, mesh=mesh,
                            num_threads=config.data.num_threads, flip_average=config.eval.flip_average,
                            progress=progress)


def target_root(config, workdir: str) -> str:
    """The target dataset root: data.target.root, or the demo target (generated if needed) with data.demo."""
    if config.data.demo:
        from svreid_jax.data import toy

        root = config.data.demo_root or os.path.join(workdir, "data")
        return str(toy.ensure(root, **config.data.demo_options.to_dict()).target_root)
    return config.data.target.root


def load_target(config, workdir: str, **option_overrides) -> DatasetSplits:
    """The target splits as the config names them; `option_overrides` replace reader options (e.g. split_id)."""
    options = {**config.data.target.options.to_dict(), **option_overrides}
    return datasets.load(config.data.target.name, target_root(config, workdir), **options)


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
                   checkpoint: CheckpointInfo | None = None) -> dict:
    """Write features.npy, index.csv and extract.json for the tracklets under `data_root`; return extract.json's dict."""
    data = read_folder(data_root)
    logging.info("extracting %d tracklets from %s", len(data.tracklets), data.root)
    start = time.perf_counter()
    feats = tracklet_features(config, model, variables, data.tracklets, mesh)
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
    mesh = steps.data_mesh()
    model, variables, info = restore_variables(config, workdir, mesh)
    out_dir = os.path.join(workdir, "extract")
    result = extract_folder(config, model, variables, data_root, out_dir, mesh, checkpoint=info)
    print(f"wrote {result['num_tracklets']} × {result['feature_dim']} features to "
          f"{os.path.join(out_dir, 'features.npy')} and the index to {os.path.join(out_dir, 'index.csv')} "
          f"({result['tracklets_per_second']:.1f} tracklets/s)", flush=True)
    return result


__all__ = ["CheckpointInfo", "FolderTracklets", "checkpoint_directory", "extract_folder",
           "index_rows", "load_target", "read_folder", "restore_variables", "run_extract", "target_root",
           "tracklet_features"]
