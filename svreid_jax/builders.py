"""Config → objects: dataset splits (folder or packed), clip specs, the model, its variables, the train
state, and the variables restored from a checkpoint. Training, `--mode=eval`, `--mode=visualize`,
`--mode=extract` and the notebooks all build through here, so they read data and models the same way.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from svreid_jax import interop, parallel, variants
from svreid_jax.data import datasets, pack, pipeline
from svreid_jax.data import demo as demo_data
from svreid_jax.data.records import DatasetError, DatasetSplits
from svreid_jax.interop import baseline, hub
from svreid_jax.models import backbones, reid
from svreid_jax.state import TrainState, create_train_state
from svreid_jax.utils.checkpointing import CheckpointError, Checkpointer

CHECKPOINT_CHOICES = ("auto", "latest", "best")


class WeightsError(ValueError):
    """`model.init_from` names weights that cannot be used: none for a real depth, a missing or unreadable
    file, a file of the wrong network. One line naming the field or file and what to do."""


class NoCheckpoint(CheckpointError, FileNotFoundError):
    """An evaluation mode found no checkpoint to restore; one line naming the folder."""


# ---------------------------------------------------------------------------------------------
# Data


def demo_roots(config, workdir: str) -> tuple[str, str]:
    """(source root, target root) of the demo data (generated under data.demo_root or <workdir>/data
    if missing); with data.demo_source_domain='target' the source is the target (the oracle).

    A demo shift other than the default (demo_options.shift, e.g. 'hard') lives in <root>_<shift>, so
    a shared demo_root never has one preset's data regenerated over the other's.
    """
    root = config.data.demo_root or os.path.join(workdir, "data")
    shift = config.data.demo_options.get("shift", "none")
    if shift != "none":
        root = f"{root.rstrip(os.sep)}_{shift}"
    paths = demo_data.ensure(root, **config.data.demo_options.to_dict())
    target_root = str(paths.target_root)
    source_root = target_root if config.data.demo_source_domain == "target" else str(paths.source_root)
    return source_root, target_root


def load_split_set(dataset_config, root: str, **option_overrides) -> DatasetSplits:
    """The splits of one `config.data.source` / `config.data.target` entry: its packed array_record
    shards (`python -m svreid_jax.data.pack`: same tracklets, same batches) when `packed` is set, else the
    reader `name` on `root` with `options` (`option_overrides` replace options, e.g. split_id)."""
    if dataset_config.packed:
        if option_overrides:
            raise ValueError(f"data.{dataset_config.name}: reader options {sorted(option_overrides)} cannot change "
                             f"packed shards ({dataset_config.packed}); pack each variant, or read the folder")
        return pack.load_packed(dataset_config.packed)
    options = {**dataset_config.options.to_dict(), **option_overrides}
    return datasets.load(dataset_config.name, root, **options)


def dataset_roots(config, workdir: str) -> tuple[str, str]:
    """(source root, target root) as the config names them; generates the demo data if asked."""
    if config.data.demo:
        return demo_roots(config, workdir)
    return config.data.source.root, config.data.target.root


def load_datasets(config, workdir: str) -> tuple[DatasetSplits, DatasetSplits]:
    """(source splits, target splits) as the config names them; generates the demo data if asked."""
    source_root, target_root = dataset_roots(config, workdir)
    return load_split_set(config.data.source, source_root), load_split_set(config.data.target, target_root)


def check_train_splits(config, workdir: str, source: DatasetSplits, target: DatasetSplits) -> None:
    """DatasetError (one line naming the dataset, where it was read and its list file) when the source or
    target train split holds no tracklet: training samples from both (the target stream runs even for
    variants that do not read it), and an empty one has nothing to sample."""
    roots = dataset_roots(config, workdir)
    for side, splits, root in (("source", source, roots[0]), ("target", target, roots[1])):
        entry = config.data[side]
        options = f" (options {dict(entry.options)})" if entry.options else ""
        where = f"the packed shards {entry.packed}" if entry.packed else f"the {entry.name!r} reader on {root}{options}"
        datasets.require_split(splits.train, "train", entry.name, where, side,
                               others=f"; {len(splits.query)} query, {len(splits.gallery)} gallery")


def load_target(config, workdir: str, **option_overrides) -> DatasetSplits:
    """The target splits alone (evaluation modes); `option_overrides` replace reader options (e.g. split_id)."""
    root = demo_roots(config, workdir)[1] if config.data.demo else config.data.target.root
    return load_split_set(config.data.target, root, **option_overrides)


def hold_out_source(splits: DatasetSplits, num_ids: int, seed: int) -> tuple[DatasetSplits, DatasetSplits | None]:
    """Split source identities: (training splits, a held-out query/gallery for model selection, or None).

    Up to `num_ids` source identities (drawn with the seed) leave training, among those with tracklets
    in at least two cameras: each gives its first tracklet as a query and the rest as gallery, so every
    query has a match in another camera (the protocols ignore same-camera matches; an identity without
    one would score rank-1 0 whatever the model). Fewer qualifying: those are held out, with a warning;
    none: the splits unchanged and None, with a warning that selection is off. Training pids are
    relabelled 0..N−1. Selecting on these never looks at target labels.
    """
    if not isinstance(splits.train, tuple):
        raise ValueError("train.select_holdout_ids needs the folder layout; packed shards cannot be re-split. "
                         "Set data.source.packed='' or train.select_holdout_ids=0")
    pids = sorted({t.pid for t in splits.train})
    if num_ids >= len(pids) - 1:
        raise ValueError(f"train.select_holdout_ids={num_ids} leaves too few of the {len(pids)} source identities")
    cameras: dict[int, set] = {}
    for t in splits.train:
        cameras.setdefault(t.pid, set()).add(t.camid)
    usable = [p for p in pids if len(cameras[p]) >= 2]
    if not usable:
        logging.warning("model selection is off: train.select_holdout_ids=%d, but none of the %d source identities "
                        "has tracklets in two cameras to hold out; the last state is reported", num_ids, len(pids))
        return splits, None
    if len(usable) < num_ids:
        logging.warning("model selection holds out %d source identities, not train.select_holdout_ids=%d: only "
                        "they have tracklets in two cameras", len(usable), num_ids)
    held = set(np.random.default_rng(seed).choice(usable, size=min(num_ids, len(usable)), replace=False).tolist())
    kept = [p for p in pids if p not in held]
    relabel = {p: i for i, p in enumerate(kept)}
    train_part = tuple(dataclasses.replace(t, pid=relabel[t.pid]) for t in splits.train if t.pid in relabel)
    query, gallery, seen = [], [], set()
    for t in splits.train:
        if t.pid in held:
            (gallery if t.pid in seen else query).append(t)
            seen.add(t.pid)
    return (DatasetSplits(train_part, splits.query, splits.gallery),
            DatasetSplits((), tuple(query), tuple(gallery)))


def prepare_data(config, workdir: str) -> tuple[DatasetSplits, DatasetSplits, DatasetSplits | None]:
    """(source, target, selection split or None) as the config asks, logging what was chosen."""
    source, target = load_datasets(config, workdir)
    check_train_splits(config, workdir, source, target)
    selection = None
    if config.train.select_holdout_ids > 0 and not config.train.select_on_target_test:
        source, selection = hold_out_source(source, config.train.select_holdout_ids, config.seed)
        if selection is not None:
            logging.info("model selection on %d held-out source identities (%d query / %d gallery tracklets)",
                         len(selection.query), len(selection.query), len(selection.gallery))
    elif config.train.select_on_target_test:
        logging.warning("train.select_on_target_test=True selects the checkpoint by target *test* rank-1 "
                        "(the authors' behaviour, D10 in docs/REPRODUCIBILITY.md): the result is optimistically "
                        "biased.")
        selection = target
    return source, target, selection


def clip_spec(config, train: bool) -> pipeline.ClipSpec:
    """How clips are cut and decoded: training clips (data.seq_len, data.train_temporal, flips) or
    evaluation clips (eval.seq_len, eval.temporal, no flip), at data.height × data.width."""
    decoding = dict(decoder=config.data.decoder, draft=config.data.draft_decode,
                    skip_bad_frames=config.data.skip_bad_frames)
    if train:
        return pipeline.ClipSpec(seq_len=config.data.seq_len, height=config.data.height, width=config.data.width,
                                 temporal=config.data.train_temporal, flip=config.augment.flip, **decoding)
    return pipeline.ClipSpec(seq_len=config.eval.seq_len, height=config.data.height, width=config.data.width,
                             temporal=config.eval.temporal, flip=False, **decoding)


@dataclasses.dataclass
class TrainStreams:
    """The source and target training streams of a run.

    next() → ({'source': …, 'target': …}, frames the pipeline could not decode): one step's batches,
    placed on device once `to_device` has wrapped the streams. `iterators` are what checkpoints store
    (the item names are part of the checkpoint layout); positions()/rewind() let an interrupted step
    give back the batches it had drawn.
    """

    source: Any
    target: Any
    steps_per_epoch: int

    @property
    def iterators(self) -> dict[str, Any]:
        return {"source_iter": self.source, "target_iter": self.target}

    def next(self) -> tuple[dict, int]:
        # The target stream advances even when no loss reads it, so every variant of a config sees
        # the same source batches.
        batch = {"source": next(self.source), "target": next(self.target)}
        bad_frames = sum(int(b.pop("bad_frames", 0)) for b in batch.values())
        return batch, bad_frames

    def positions(self) -> dict[str, Any]:
        return {name: it.get_state() for name, it in self.iterators.items()}

    def rewind(self, positions: dict[str, Any]) -> None:
        for name, it in self.iterators.items():
            it.set_state(positions[name])

    def to_device(self, put_batch, config) -> "TrainStreams":
        """The streams with batches placed by `put_batch` (parallel.ParallelStep.put_batch),
        data.device_prefetch steps ahead. The checkpointed positions count only the batches handed to
        the step (pipeline.DevicePrefetch). The count of undecodable frames stays on the host."""
        uses_target = variants.uses_target(config)

        def place_source(b):
            return {**put_batch({"video": b["video"], "pid": b["pid"]}), "bad_frames": b["bad_frames"]}

        def place_target(b):
            # An unused target is cut to one clip per device before the transfer.
            video = b["video"] if uses_target else b["video"][: jax.local_device_count()]
            # 'index' (the tracklet's position in target.train) is how the plus variant finds a clip's
            # pseudo-label; 'pid' never leaves the host.
            placed = {"video": video, "camid": b["camid"][: len(video)], "index": b["index"][: len(video)]}
            return {**put_batch(placed), "bad_frames": b["bad_frames"]}

        ahead = config.data.device_prefetch
        return TrainStreams(pipeline.prefetch_to_device(self.source, ahead, place_source),
                            pipeline.prefetch_to_device(self.target, ahead, place_target), self.steps_per_epoch)


def train_streams(config, source: DatasetSplits, target: DatasetSplits) -> TrainStreams:
    """P×K identity batches of the source and label-free batches of the target (data.target_sampling=
    'identity' samples by target labels, with a warning), this process's share of each, on the host;
    steps per epoch from the source sampler, capped by train.steps_per_epoch."""
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    spec = clip_spec(config, train=True)
    d = config.data
    source_it, steps_per_epoch = pipeline.source_stream(
        source.train, num_identities=config.batch.num_identities, num_instances=config.batch.num_instances,
        spec=spec, seed=config.seed, num_threads=d.num_threads, prefetch=d.prefetch, num_workers=d.num_workers,
        **process)
    if config.train.steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    identity_balanced = d.target_sampling == "identity"
    if identity_balanced:
        logging.warning("data.target_sampling='identity' samples target batches by target ground-truth "
                        "labels (the reference's behaviour, docs/METHOD.md §8 D7): this is not unsupervised.")
    target_it = pipeline.target_stream(
        target.train, batch_size=config.batch.target_size, spec=spec, seed=config.seed, num_threads=d.num_threads,
        prefetch=d.prefetch, identity_balanced=identity_balanced, num_instances=config.batch.num_instances,
        num_workers=d.num_workers, views_per_tracklet=d.target_views, **process)
    return TrainStreams(source_it, target_it, steps_per_epoch)


# ---------------------------------------------------------------------------------------------
# Model and state


def create_model(config, num_classes: int) -> reid.ReIDNet:
    """The ReIDNet of `config.model` with the backbone `model.arch` names (models.backbones)."""
    m = config.model
    backbone = backbones.get(m.arch)
    return reid.ReIDNet(num_classes=num_classes, backbone=backbone.options(m), frame_pooling=m.frame_pooling,
                        disc_hidden=m.disc_hidden, disc_dropout=m.disc_dropout, dtype=jnp.dtype(m.dtype),
                        arch=m.arch, infonce_projection=config.loss.infonce > 0,
                        bnneck_torch_stats=m.bnneck_torch_stats)


# Depths whose random start is refused unless model.init_from says 'none' (the tiny test/demo nets are not).
REAL_DEPTHS = ("18", "34", "50", "101")
_INIT_KEYWORDS = ("", "none", "imagenet")


def initial_weights(config) -> str | None:
    """The weight file training starts from, as `model.init_from` says; None for a random start.

    'imagenet': torchvision's ImageNet ResNet of `model.depth`, fetched from the Hugging Face hub once and
    cached (interop/hub.py); a path: that file (.safetensors, .npz, or .pth with torch); 'none': random
    weights on purpose. Empty: random for the tiny demo/test ResNet, and refused (ValueError, one line saying
    how to get weights) for ResNet-18/34/50/101, whose random start would make every real number
    meaningless. Training calls this before reading any data, so a refusal or a failed download comes first.
    """
    init = str(config.model.init_from).strip()
    depth = str(config.model.depth).strip()
    if init.lower() == "none":
        return None
    if not init:
        if depth not in REAL_DEPTHS:
            return None
        imagenet = ("--config.model.init_from=imagenet (torchvision's ImageNet weights, downloaded once from the "
                    "Hugging Face hub), " if depth in hub.IMAGENET_RESNETS else "")
        raise WeightsError(f"model.init_from is empty, so the ResNet-{depth} backbone would start from random weights; "
                         f"set {imagenet}--config.model.init_from=<a torchvision ResNet-{depth} .safetensors/.npz/.pth "
                         "file>, or --config.model.init_from=none to train from random weights on purpose")
    if init.lower() == "imagenet":
        return hub.fetch_imagenet_resnet(depth)
    return init


def init_variables(config, model, rng: jax.Array) -> tuple[Any, Any]:
    """(params, batch_stats) of a fresh model, the backbone's ResNet part loaded from `initial_weights(config)`
    (every tensor checked against a torchvision ResNet of model.depth/width; plug-ins and conv biases the file
    does not have keep their initialisation)."""
    weights = initial_weights(config)  # before the (slow) init, so a refusal comes first
    state_dict = None
    if weights is not None:
        try:
            state_dict = interop.read_state_dict(weights)
            interop.check_resnet_state_dict(state_dict, config.model.depth, config.model.width, where=weights)
        except (OSError, ImportError, ValueError) as err:  # missing, torch absent, unreadable, another network
            raise WeightsError(" ".join(str(err).split())) from None
    shape = (1, config.data.seq_len, config.data.height, config.data.width, 3)
    params, batch_stats = reid.init_model(model, rng, shape)
    if state_dict is not None:
        params, batch_stats = interop.load_backbone_weights(state_dict, params, batch_stats, where=weights)
        logging.info("backbone initialised from %s", weights)
    return params, batch_stats


def create_state(config, model, num_steps_per_epoch: int, seed_key: jax.Array,
                 num_target_train: int = 0) -> TrainState:
    """A fresh TrainState for `config.variant`: initial variables, optimiser, teacher, RNG and the
    variant's own state (TrainState.variant_state; num_target_train sizes the plus variant's labels)."""
    init_rng, state_rng = jax.random.split(seed_key)
    params, batch_stats = init_variables(config, model, init_rng)
    extra = variants.init_state(config, model, params, state_rng, num_steps_per_epoch,
                                num_target_train=num_target_train)
    return create_train_state(config, model.apply, params, batch_stats, state_rng, num_steps_per_epoch,
                              variant_state=extra)


# ---------------------------------------------------------------------------------------------
# Restored variables (evaluation modes)


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
    if which == "best" or (which == "auto" and saved_steps(best)):
        return best
    return latest


def saved_steps(directory: str) -> list[int]:
    """The checkpoint steps in an orbax directory, newest first, read from the folder names alone (nothing
    is created or opened; a missing directory has none)."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)


def restore_variables(config, workdir: str, mesh=None) -> tuple[reid.ReIDNet, dict, CheckpointInfo]:
    """(model, {'params', 'batch_stats'}, info) from the checkpoint `config.eval.checkpoint` picks.

    The train state is restored as saved (no optimiser is built, no training data is read); the number of
    classes comes from the saved classifier. If `config.model.init_from` names one of the authors' student
    checkpoints (a `.pth(.tar)` with the BN-neck `bn.*` and `classifier.*`, or its `.npz`), that file is
    converted on the fly (interop.baseline) and evaluated instead of the workdir's checkpoint. With
    `config.eval.use_teacher` the EMA teacher is returned. Variables are replicated over `mesh`
    (default: all devices). NoCheckpoint (a CheckpointError) when there is nothing to restore; WeightsError
    when model.init_from names a file that is missing or unreadable.
    """
    if str(config.model.init_from).strip().lower() not in _INIT_KEYWORDS:  # a file, not a keyword
        state_dict = _baseline_student(config)
        if state_dict is not None:
            return _baseline_variables(config, state_dict, mesh)
    directory = checkpoint_directory(workdir, config.eval.checkpoint)
    if not saved_steps(directory):
        raise NoCheckpoint(f"no checkpoint under {directory}; train first (--mode=train) with this --workdir")
    # The newest step that restores; a damaged newer one is named in a warning and left in place.
    checkpointer = Checkpointer(directory)
    step, _, state = checkpointer.restore_saved()
    checkpointer.close()
    teacher = bool(config.eval.use_teacher)
    params = state["ema_params"] if teacher else state["params"]
    batch_stats = state["ema_batch_stats"] if teacher else state["batch_stats"]
    num_classes = int(np.shape(params["classifier"]["kernel"])[-1])
    model = create_model(config, num_classes)
    mesh = parallel.data_mesh() if mesh is None else mesh
    variables = parallel.replicate({"params": params, "batch_stats": batch_stats}, mesh)
    logging.info("restored %s step %d (%s, %d source classes)", directory, step,
                 "EMA teacher" if teacher else "student", num_classes)
    return model, variables, CheckpointInfo(directory=directory, step=int(step), teacher=teacher)


def _baseline_student(config) -> dict | None:
    """The authors' student state_dict named by model.init_from, or None if the file is not one (e.g.
    ImageNet weights, which only initialise training).

    A `.safetensors` file is read with safetensors' numpy API (as training reads it), a `.npz` with numpy,
    anything else as a PyTorch file (needs torch). A file that is missing or cannot be read raises
    WeightsError (one line): evaluating the workdir's checkpoint instead would hide the mistake.
    """
    path = str(config.model.init_from).strip()
    hint = ("set --config.model.init_from='' to evaluate the workdir's checkpoint, which holds the trained "
            "weights whatever training started from")
    if not os.path.isfile(path):
        raise WeightsError(f"model.init_from={path}: no such file (evaluation modes read it when it is one of the "
                           f"authors' student checkpoints); {hint}")
    try:
        if path.endswith(".safetensors"):
            state_dict = interop.read_state_dict(path)
        else:
            state_dict = baseline.read_baseline_checkpoint(path, allow_pickle=config.model.init_from_allow_pickle)
    except (OSError, ImportError, ValueError, TypeError) as err:
        raise WeightsError(f"model.init_from={path}: {' '.join(str(err).split())}; {hint}") from None
    if "classifier.weight" not in state_dict or "bn.weight" not in state_dict:
        return None
    return state_dict


def _baseline_variables(config, state_dict: dict, mesh) -> tuple[reid.ReIDNet, dict, CheckpointInfo]:
    """(model, variables, info) for an authors' student state_dict, on the model the config describes."""
    path = config.model.init_from
    arch = baseline.infer_arch(state_dict)
    if arch != backbones.canonical_name(config.model.arch):
        raise ValueError(f"{path} holds a {arch!r} network but config.model.arch={config.model.arch!r}; "
                         f"use configs/<target>.py:reference (sinet) or --config.model.arch={arch}")
    num_classes = int(np.shape(state_dict["classifier.weight"])[0])
    model = create_model(config, num_classes)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0),
                                          (1, config.eval.seq_len, config.data.height, config.data.width, 3))
    # The InfoNCE projection is a training head: drop it when this model has none.
    drop = () if "projection" in params else ("projection",)
    params, batch_stats = baseline.load_baseline_checkpoint(state_dict, params, batch_stats, drop=drop)
    mesh = parallel.data_mesh() if mesh is None else mesh
    variables = parallel.replicate({"params": params, "batch_stats": batch_stats}, mesh)
    logging.info("evaluating the authors' checkpoint %s (%s, %d source classes), converted", path, arch, num_classes)
    return model, variables, CheckpointInfo(directory=os.path.abspath(path), step=-1, teacher=False)
