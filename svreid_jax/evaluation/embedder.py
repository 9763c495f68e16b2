"""`svreid_jax.Embedder`: a trained model as a function from clips or tracklets to re-ID embeddings.

    from svreid_jax import Embedder
    embed = Embedder.from_workdir("runs/mars")        # the run's checkpoint and the config stored in it
    embed = Embedder.from_export("exports/mars")      # or a --mode=export folder: no config, no checkpoint
    feats = embed(clips)                              # uint8 [N, T, H, W, 3] (numpy) → float32 [N, D]
    feats = embed([["a/0001.jpg", "a/0002.jpg"], ...]) # tracklets as lists of frame paths → float32 [N, D]

The embeddings are the ones evaluation ranks: the BN-neck embedding (`bn_embedding`) of the eval forward
(features.make_embed_step) of the student, or of the EMA teacher with eval.use_teacher; with
eval.flip_average the mirrored clip's embedding is averaged in. Tracklets are cut into evaluation clips
as evaluation cuts them (eval.temporal, eval.seq_len at data.height × data.width; several clips of one
tracklet with 'dense', averaged), through the same code (features.extract), so `embed(paths)` equals
--mode=extract's features.npy. Test-time steps that need the whole gallery (eval.camera_normalise,
re-ranking) are not part of an embedding.

Batches of `batch_size` clips (default: evaluation's, features.eval_sizing; the last one padded) run
jitted on the device; from_workdir splits each batch over all devices like evaluation (so batch_size
must be a multiple of the device count), from_export runs on one device.

An export folder (written by --mode=export, evaluation/export.py) holds:

  embed.stablehlo     jax.export serialization of (variables, uint8 clips [b, T, H, W, 3]) → float32
                      [b, D], b symbolic; flip averaging is inside it
  model.safetensors   the variables it takes, {'params', 'batch_stats'} flattened to '/'-joined names
  config.json         the run's config ('config') and what loading needs: input height/width, clip
                      length, embedding dim, compute dtype, the platforms it was lowered for
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svreid_jax import builders, parallel
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import features
from svreid_jax.utils.checkpointing import CheckpointError, Checkpointer

FORMAT = "svreid_jax.export"
FORMAT_VERSION = 1
FUNCTION_FILE = "embed.stablehlo"
VARIABLES_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXPORT_FILES = (CONFIG_FILE, VARIABLES_FILE, FUNCTION_FILE)


class ExportError(ValueError):
    """An export folder that cannot be written or read; the message is one line naming the folder or file."""


# ---------------------------------------------------------------------------------------------------------
# The run's config, from a checkpoint


def config_from_json(stored: dict) -> ml_collections.ConfigDict:
    """The ConfigDict of a config stored as JSON (config_checks.as_json), tuples restored from lists.

    JSON has no tuples, and every sequence field of configs/default.py is a tuple; giving them back as
    tuples keeps the model's attributes hashable, as they are when built from the config file.
    """
    def restore(value):
        if isinstance(value, dict):
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return tuple(restore(v) for v in value)
        return value

    if not isinstance(stored, dict):
        raise ValueError(f"a stored config must be a JSON object, got {type(stored).__name__}")
    return ml_collections.ConfigDict(restore(stored))


def stored_config(workdir: str, checkpoint: str = "auto") -> tuple[ml_collections.ConfigDict, str]:
    """(the config a run stored with its checkpoints, the checkpoint folder it was read from).

    checkpoint: as eval.checkpoint ('auto': best/ when it holds a step, else checkpoints/). The newest
    step whose metadata reads is used. No step, or metadata without a config → CheckpointError.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    directory = builders.checkpoint_directory(workdir, checkpoint)
    steps = builders.saved_steps(directory)
    if not steps:
        raise CheckpointError(f"no checkpoint under {directory}; train first (--mode=train) with --workdir={workdir}")
    checkpointer = Checkpointer(directory)
    try:
        for step in steps:
            try:
                meta = checkpointer.read_meta(step)
            except Exception:  # noqa: BLE001 — a damaged step: the next older one may read
                continue
            if "config" not in meta:
                raise CheckpointError(f"{os.path.join(directory, str(step))} stores no run config (written before "
                                      "checkpoints kept one); use Embedder.from_config(config, workdir) with the "
                                      "run's --config")
            return config_from_json(meta["config"]), directory
    finally:
        checkpointer.close()
    raise CheckpointError(f"no checkpoint metadata under {directory} can be read (steps {steps})")


# ---------------------------------------------------------------------------------------------------------
# Variables as flat tensors


def flatten_variables(variables: Any) -> dict[str, np.ndarray]:
    """{'params/backbone/conv1/kernel': array, ...}: every leaf of the variables under its '/'-joined path."""
    return {name: np.asarray(leaf) for name, leaf in _named_leaves(variables)}


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
    named = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if any("/" in k for k in keys):
            raise ValueError(f"variable name {keys} holds a '/', which flat names use as the separator")
        named.append(("/".join(keys), leaf))
    return named


def unflatten_variables(flat: dict[str, Any]) -> dict:
    """The nested dicts of `flatten_variables`' output."""
    nested: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


# ---------------------------------------------------------------------------------------------------------
# The embedding function


def clip_function(model, flip_average: bool) -> Callable:
    """(variables, uint8 clips [B, T, H, W, 3]) → float32 [B, D]: the eval forward's BN-neck embedding,
    averaged with the mirrored clip's when flip_average (as features.extract averages them)."""
    embed = features.make_embed_step(model)
    if not flip_average:
        return embed

    def flipped_too(variables, video):
        return (embed(variables, video) + embed(variables, video[:, :, :, ::-1])) / 2

    return flipped_too


class Embedder:
    """A trained model's embedding: uint8 clips or frame-path tracklets → float32 [N, D] (numpy).

    Build it with `from_workdir`, `from_config` or `from_export`. Attributes: `config` (the run's
    ConfigDict), `spec` (the evaluation ClipSpec), `clip_shape` (T, H, W), `embedding_dim` (D),
    `batch_size` (clips per device call), `source` (where the model came from, as a dict), and for
    checkpoint-built embedders `model` and `variables` (None from an export).
    """

    def __init__(self, embed_fn: Callable, variables: Any, config, *, flip_average: bool, mesh: Mesh,
                 batch_size: int | None = None, model=None, source: dict | None = None):
        """embed_fn(variables, uint8 [B, T, H, W, 3]) → float32 [B, D], jittable; flip_average: also
        embed the mirrored clips and average (leave False when embed_fn does it itself)."""
        self.config = config
        self.spec = builders.clip_spec(config, train=False)
        self.clip_shape = (int(self.spec.seq_len), int(self.spec.height), int(self.spec.width))
        self.model = model
        self.source = dict(source or {})
        self._embed = embed_fn
        self._flip = bool(flip_average)
        self._mesh = mesh
        self._data = NamedSharding(mesh, P("data"))
        self.variables = jax.device_put(variables, NamedSharding(mesh, P()))
        auto_batch, self._num_threads = features.eval_sizing(config, mesh)
        self.batch_size = self._checked_batch_size(auto_batch if batch_size is None else batch_size)
        self._jitted = jax.jit(embed_fn, in_shardings=(NamedSharding(mesh, P()), self._data),
                               out_shardings=NamedSharding(mesh, P()))
        probe = jax.ShapeDtypeStruct((mesh.size, *self.clip_shape, 3), jnp.uint8)
        self.embedding_dim = int(jax.eval_shape(embed_fn, self.variables, probe).shape[-1])

    # --- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_workdir(cls, workdir: str, *, checkpoint: str | None = None, use_teacher: bool | None = None,
                     batch_size: int | None = None, mesh: Mesh | None = None) -> "Embedder":
        """The model of a training run's workdir, built from the config its checkpoint stores (no config file).

        checkpoint: 'auto' | 'latest' | 'best' (default: the stored eval.checkpoint); use_teacher: the EMA
        teacher instead of the student (default: the stored eval.use_teacher). The weights always come
        from the workdir's checkpoint (model.init_from, which only started training, is not read).
        """
        config, _ = stored_config(workdir, checkpoint or "auto")
        if checkpoint is not None:
            config.eval.checkpoint = checkpoint
        if use_teacher is not None:
            config.eval.use_teacher = bool(use_teacher)
        config.model.init_from = ""
        return cls.from_config(config, workdir, batch_size=batch_size, mesh=mesh)

    @classmethod
    def from_config(cls, config, workdir: str, *, batch_size: int | None = None,
                    mesh: Mesh | None = None) -> "Embedder":
        """The model `config` describes, with the variables --mode=eval would evaluate
        (builders.restore_variables: eval.checkpoint, eval.use_teacher, or an authors' model.init_from)."""
        mesh = parallel.data_mesh() if mesh is None else mesh
        model, variables, info = builders.restore_variables(config, workdir, mesh)  # NoCheckpoint: a CheckpointError
        source = {"workdir": os.path.abspath(workdir), "checkpoint": info.directory, "step": info.step,
                  "teacher": info.teacher}
        return cls(features.make_embed_step(model), variables, config, flip_average=bool(config.eval.flip_average),
                   mesh=mesh, batch_size=batch_size, model=model, source=source)

    @classmethod
    def from_export(cls, path: str, *, batch_size: int | None = None, device=None) -> "Embedder":
        """The model of a --mode=export folder, reading only that folder; runs on `device` (default: the first)."""
        path = os.path.abspath(os.path.expanduser(path))
        meta = read_export_meta(path)
        exported = _deserialize(os.path.join(path, FUNCTION_FILE))
        platform = jax.export.default_export_platform()
        if platform not in exported.platforms:
            raise ExportError(f"{os.path.join(path, FUNCTION_FILE)} was exported for {', '.join(exported.platforms)}, "
                              f"not for {platform}, where this process runs; export again on a {platform} machine")
        variables = _read_variables(os.path.join(path, VARIABLES_FILE), exported)
        config = config_from_json(meta["config"])
        video = exported.in_avals[-1]
        expected = (meta["input"]["clip_len"], meta["input"]["height"], meta["input"]["width"])
        if tuple(video.shape[1:4]) != tuple(expected) or (
                (config.eval.seq_len, config.data.height, config.data.width) != tuple(expected)):
            raise ExportError(f"{os.path.join(path, CONFIG_FILE)}: input clip_len/height/width {expected} disagree "
                              f"with {FUNCTION_FILE}'s input {tuple(video.shape)} or the stored config")
        mesh = parallel.data_mesh([device if device is not None else jax.devices()[0]])
        source = {"export": path, **{k: meta.get(k) for k in ("checkpoint", "step", "teacher")}}
        # Flip averaging, when the run used it, is inside the exported function.
        return cls(exported.call, variables, config, flip_average=False, mesh=mesh, batch_size=batch_size,
                   source=source)

    # --- embedding ---------------------------------------------------------------------------------------

    def __call__(self, inputs, *, batch_size: int | None = None) -> np.ndarray:
        """float32 [N, D] embeddings of uint8 clips [N, T, H, W, 3] (an array) or of N tracklets (a
        sequence, each tracklet a sequence of frame paths or a Tracklet)."""
        if isinstance(inputs, (np.ndarray, jax.Array)):
            return self.embed_clips(inputs, batch_size=batch_size)
        if isinstance(inputs, (str, bytes, os.PathLike)):
            raise TypeError(f"Embedder got the single path {inputs!r}; give a list of tracklets, each a list of "
                            "frame paths, or a uint8 array of clips [N, T, H, W, 3]")
        return self.embed_tracklets(inputs, batch_size=batch_size)

    def embed_clips(self, clips, *, batch_size: int | None = None) -> np.ndarray:
        """float32 [N, D] embeddings of uint8 clips [N, T, H, W, 3] (T, H, W = `clip_shape`), one per clip."""
        clips = self._checked_clips(clips)
        size = self._checked_batch_size(batch_size)
        out = np.empty((len(clips), self.embedding_dim), np.float32)
        pending = []  # one batch in flight, so the host's copying overlaps the device
        for start in range(0, len(clips), size):
            batch = clips[start:start + size]
            count = len(batch)
            if count < size:
                batch = np.concatenate([batch, np.zeros((size - count, *batch.shape[1:]), np.uint8)])
            pending.append((start, count, self._embed_batch(batch)))
            if len(pending) > 1:
                self._store(out, *pending.pop(0))
        for item in pending:
            self._store(out, *item)
        return out

    def embed_tracklets(self, tracklets: Sequence, *, batch_size: int | None = None) -> np.ndarray:
        """float32 [N, D] features of N tracklets (each a sequence of frame paths in temporal order, or a
        Tracklet), cut into evaluation clips and averaged per tracklet exactly as evaluation does."""
        tracklets = as_tracklets(tracklets)
        size = self._checked_batch_size(batch_size)
        if not tracklets:
            return np.zeros((0, self.embedding_dim), np.float32)
        return features.extract(self._embed, self.variables, tracklets, spec=self.spec, batch_size=size,
                                method=self.config.eval.temporal, mesh=self._mesh,
                                num_threads=self._num_threads, flip_average=self._flip)

    def clip_function(self) -> Callable:
        """(variables, uint8 [B, T, H, W, 3]) → float32 [B, D] with flip averaging inside: what an export
        serializes. Only for an embedder built from a checkpoint."""
        if self.model is None:
            raise ValueError("this Embedder was loaded from an export; its function is already serialized")
        return clip_function(self.model, self._flip)

    def __repr__(self) -> str:
        return (f"Embedder(clips uint8 [N, {', '.join(map(str, self.clip_shape))}, 3] → float32 "
                f"[N, {self.embedding_dim}], batch_size={self.batch_size}, source={self.source})")

    # --- helpers -----------------------------------------------------------------------------------------

    def _embed_batch(self, batch: np.ndarray) -> jax.Array:
        # The same calls and the same sum as features.extract, so a clip's embedding here equals the
        # feature evaluation gives a tracklet cut into that one clip.
        emb = self._jitted(self.variables, jax.device_put(batch, self._data))
        if self._flip:
            emb = (emb + self._jitted(self.variables, jax.device_put(batch[:, :, :, ::-1], self._data))) / 2
        return emb

    @staticmethod
    def _store(out: np.ndarray, start: int, count: int, emb: jax.Array) -> None:
        out[start:start + count] = np.asarray(jax.device_get(emb))[:count]

    def _checked_batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size % self._mesh.size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {self._mesh.size} devices each batch "
                             "is split over")
        return int(batch_size)

    def _checked_clips(self, clips) -> np.ndarray:
        clips = np.asarray(clips)
        expected = (*self.clip_shape, 3)
        if clips.ndim != 5 or tuple(clips.shape[1:]) != expected:
            raise ValueError(f"clips must have shape [N, {', '.join(map(str, expected))}] (N clips of T frames, "
                             f"H × W, RGB), got {list(clips.shape)}")
        if clips.dtype != np.uint8:
            raise ValueError(f"clips must be uint8 frames (0–255; the model normalises them), got {clips.dtype}")
        return clips


def as_tracklets(items: Sequence) -> list[Tracklet]:
    """Tracklets of frame-path sequences (pid and camid -1: unknown), Tracklets passed through."""
    if isinstance(items, (str, bytes, os.PathLike)):
        raise TypeError(f"tracklets must be a list of tracklets, each a list of frame paths; got the path {items!r}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Tracklet):
            out.append(item)
            continue
        if isinstance(item, (str, bytes, os.PathLike)):
            raise TypeError(f"tracklet {i} is the single path {item!r}; give each tracklet as a list of its frame "
                            "paths")
        frames = tuple(os.fspath(p) for p in item)
        if not frames:
            raise ValueError(f"tracklet {i} has no frames")
        out.append(Tracklet(frames=frames, pid=-1, camid=-1))
    return out


# ---------------------------------------------------------------------------------------------------------
# Reading an export


def read_export_meta(path: str) -> dict:
    """config.json of an export folder, checked: the folder and its three files exist, the format is ours."""
    if not os.path.isdir(path):
        raise ExportError(f"{path} is not a folder; expected an export written by --mode=export --out={path}")
    for name in EXPORT_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            raise ExportError(f"{path}: missing {name}; an export holds {', '.join(EXPORT_FILES)} "
                              "(write one with --mode=export --out=<folder>)")
    config_file = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_file, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{config_file}: cannot be read as JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"{config_file}: not an svreid_jax export (expected \"format\": \"{FORMAT}\")")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{config_file}: export format version {meta.get('format_version')!r}; this code reads "
                          f"version {FORMAT_VERSION}")
    for key in ("config", "input"):
        if not isinstance(meta.get(key), dict):
            raise ExportError(f"{config_file}: field {key!r} is missing or not an object")
    for key in ("clip_len", "height", "width"):
        if not isinstance(meta["input"].get(key), int):
            raise ExportError(f"{config_file}: field input.{key} is missing or not an integer")
    return meta


def _deserialize(path: str) -> jax.export.Exported:
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    try:
        return jax.export.deserialize(blob)
    except ImportError as err:  # jax reads the serialization with flatbuffers, an optional dependency of jax
        raise ExportError(f"{path}: reading it needs the 'flatbuffers' package ({err})") from None
    except Exception as err:  # noqa: BLE001 — whatever the flatbuffer parser or MLIR raised
        raise ExportError(f"{path}: not a jax.export serialization ({type(err).__name__}: {err})") from None


def _read_variables(path: str, exported: jax.export.Exported) -> dict:
    """model.safetensors as the nested variables `exported` takes, each tensor's name, shape and dtype checked."""
    try:
        flat = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise ExportError(f"{path}: cannot be read as safetensors ({err})") from None
    args, _ = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
    wanted = dict(_named_leaves(args[0]))
    missing = sorted(set(wanted) - set(flat))
    if missing:
        raise ExportError(f"{path}: no tensor {missing[0]!r}, which {FUNCTION_FILE} takes "
                          f"({len(missing)} missing)")
    extra = sorted(set(flat) - set(wanted))
    if extra:
        raise ExportError(f"{path}: tensor {extra[0]!r} is not an input of {FUNCTION_FILE}")
    for name, aval in wanted.items():
        if tuple(flat[name].shape) != tuple(aval.shape) or flat[name].dtype != aval.dtype:
            raise ExportError(f"{path}: tensor {name!r} is {flat[name].dtype}{list(flat[name].shape)}, "
                              f"{FUNCTION_FILE} takes {aval.dtype}{list(aval.shape)}")
    return unflatten_variables(flat)


__all__ = ["CONFIG_FILE", "EXPORT_FILES", "Embedder", "ExportError", "FORMAT", "FORMAT_VERSION", "FUNCTION_FILE",
           "VARIABLES_FILE", "as_tracklets", "clip_function", "config_from_json", "flatten_variables",
           "read_export_meta", "stored_config", "unflatten_variables"]
