"""The authors' PyTorch checkpoints (XiangqunZhang/UDA_Video_ReID, a SINet copy) → Linen variables.

Two kinds of files:

* The student Re-ID network, `checkpoint_ep*.pth.tar` / `best_model.pth.tar`:
  `{'state_dict': …, 'attn_state_dict': …, 'rank1': …, 'epoch': …}` (a bare state_dict is accepted
  too; a `module.` prefix from DataParallel is stripped). `convert_baseline_checkpoint` maps it onto
  `ReIDNet(arch=…, backbone={'depth': 50, 'last_stride': 1, 'stem_pool_padding': 0,
  'conv_bias': True}, infonce_projection=…)`:

    conv1.{weight [O,I,1,7,7], bias}, bn1.*          → backbone/conv1, backbone/bn1
    layer{s}.{j}.conv{1,2,3}.{weight,bias}, bn{1,2,3} → backbone/layer{s}_{i}/conv…, bn…
    layer{s}.{j}.downsample.{0,1}.*                  → backbone/layer{s}_{i}/downsample_{0,1}
    layer{s}.{j}.chl_reduction.0 … (IDM)             → backbone/layer{s}_{i}_idm/chl_reduction_0 …
    layer{s}.{j}.kernel.{0,1}, se.{1,3} (SBM)        → backbone/layer{s}_{i}_sbm/kernel_0 …
    bn.*                                             → bnneck
    classifier.{weight [K,D], bias}                  → classifier
    projection.{weight [D,D,1], bias}                → projection (InfoNCE head)

  Inside `layer{s}` the plug-ins are extra entries of the same `nn.Sequential`, so the torch index j
  counts blocks *and* plug-ins (for 'sinet', layer2 is [b0, b1, IDM, b2, b3, IDM] and layer3 is
  [b0, b1, SBM, b2, b3, SBM, b4, b5, SBM]); i is the block number and a plug-in takes the number of
  the block before it. The kind of each entry is read from its keys, so the arch need not be given
  (`infer_arch` reports it). Conv3d weights [O, I, 1, kh, kw] → HWIO kernels (temporal size 1
  only); the plug-ins' 1×1(×1) convs, the classifier and the projection → Dense kernels [in, out];
  BatchNorm weight/bias → scale/bias, running_mean/var → batch_stats mean/var;
  num_batches_tracked is dropped.

* The temporal module, `GRL_dir/models/epoch-*.model` (`torch.save(MultiStageModel.state_dict())`):
  `convert_baseline_temporal` maps `stage1.*`, `stages.{j}.*` and `bn.*` onto
  `svreid_jax.models.temporal.MultiStageTCN`, and the discriminator heads (`ad_net_base.0.fc1`,
  `ad_net_cls.0` → frame; `ad_net_seq_base.0.fc1`, `ad_net_seq_cls.0` → sequence) onto
  `DomainDiscriminator` trees {fc1, fc2}.

What was checked and what was not (no released checkpoint could be downloaded here):
  * The key names above were inferred from docs/METHOD.md §3 and from reading the authors' model code
    (models/resnet.py, inflate.py, integration_distribution_module.py, salient_to_broad_module.py,
    vidDA_model.py at HEAD e416d56), not from an actual file. The tests build PyTorch modules with
    exactly these names and check numerical parity.
  * Not verified against a real file: that `best_model.pth.tar` holds `state_dict` at the top level
    (the saving code says so); whether the released Drive weights came from `model.module` (no
    prefix, as the code saves when on GPU) or were re-saved another way; the exact shapes
    (e.g. IDM's N = 4·32·16 = 2048 and its reduction to 128 for 256×128 input).
  * Not supported: Statistic-Attention blocks ('sanet'), and convs inflated with a temporal kernel
    larger than 1 (the code can build them, the shipped archs do not).
  * The authors' files may hold numpy scalars (e.g. `rank1`), which torch ≥ 2.6 refuses to unpickle
    with `weights_only=True`; `read_baseline_checkpoint(path, allow_pickle=True)` loads them with
    full unpickling — only for files you trust.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import flax
import numpy as np

from svreid_jax.interop.torchvision import merge_pretrained

_LAYER_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_BN_LEAVES = {"running_mean": "mean", "running_var": "var"}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A checkpoint dict ({'state_dict': …, …}) or a bare state_dict → {key: numpy array}, with a
    DataParallel `module.` prefix removed."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state_dict or a checkpoint dict, got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    return {str(k).removeprefix("module."): _to_numpy(v) for k, v in obj.items()}


def read_baseline_checkpoint(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Read a student checkpoint (`.pth.tar`/`.pth`, needs torch) or an `.npz` of its state_dict."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"baseline checkpoint not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return unwrap_state_dict({k: data[k] for k in data.files})
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a PyTorch file: install torch (the optional extra) or convert it to .npz "
                          f"where torch is available") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises UnpicklingError (and others) for non-tensor objects
        if allow_pickle:
            raise
        raise ValueError(f"{path}: torch.load(weights_only=True) failed ({type(e).__name__}: {e}). The authors' "
                         "checkpoints may hold numpy scalars; if you trust the file, pass allow_pickle=True") from e
    return unwrap_state_dict(obj)


def _conv_kernel(key: str, w: np.ndarray) -> np.ndarray:
    """Conv3d [O, I, 1, kh, kw] or Conv2d [O, I, kh, kw] → HWIO."""
    if w.ndim == 5:
        if w.shape[2] != 1:
            raise ValueError(f"{key}: temporal kernel size {w.shape[2]} (shape {w.shape}); only per-frame "
                             "(size 1) inflated convs are supported")
        w = w[:, :, 0]
    if w.ndim != 4:
        raise ValueError(f"{key}: expected a conv weight [O, I, (1,) kh, kw], got shape {w.shape}")
    return w.transpose(2, 3, 1, 0)


def _dense_kernel(key: str, w: np.ndarray) -> np.ndarray:
    """Linear [O, I] or a 1×1 conv [O, I, 1, …] → Dense kernel [I, O]."""
    if w.ndim < 2 or int(np.prod(w.shape[2:])) != 1:
        raise ValueError(f"{key}: expected a linear or 1×1 conv weight [O, I, 1, ...], got shape {w.shape}")
    return w.reshape(w.shape[0], w.shape[1]).T


def _put(params: dict, stats: dict, path: tuple[str, ...], leaf: str, value: np.ndarray, key: str,
         conv: bool) -> None:
    """Store one torch leaf (`weight`/`bias`/`running_*`) of the module at `path`."""
    value = value.astype(np.float32)
    if leaf in _BN_LEAVES:
        stats[path + (_BN_LEAVES[leaf],)] = value
    elif leaf == "weight" and value.ndim == 1:
        params[path + ("scale",)] = value
    elif leaf == "weight":
        params[path + ("kernel",)] = _conv_kernel(key, value) if conv else _dense_kernel(key, value)
    elif leaf == "bias":
        params[path + ("bias",)] = value
    else:
        raise ValueError(f"unexpected leaf in key {key!r} (shape {value.shape})")


def _entry_kind(stage: int, index: int, subkeys: Iterable[str]) -> str:
    subkeys = list(subkeys)
    if any(k.startswith("conv1.") for k in subkeys):
        return "block"
    if any(k.startswith(("chl_reduction.", "thw_reduction.")) for k in subkeys):
        return "idm"
    if any(k.startswith(("kernel.", "se.")) for k in subkeys):
        return "sbm"
    if any(k.startswith(("down_channel.", "up_channel.")) for k in subkeys):
        raise ValueError(f"layer{stage}.{index} is a Statistic-Attention block ('sanet'), which svreid_jax "
                         "does not implement")
    raise ValueError(f"layer{stage}.{index}: cannot tell what this entry is from its keys {sorted(subkeys)[:6]}")


def _layer_layout(state_dict: Mapping[str, Any]) -> dict[tuple[int, int], tuple[str, str]]:
    """(stage, torch index) → (kind, Flax module name) for every entry of every `layer{s}`."""
    entries: dict[tuple[int, int], list[str]] = {}
    for key in state_dict:
        m = _LAYER_KEY.match(key)
        if m:
            entries.setdefault((int(m.group(1)), int(m.group(2))), []).append(m.group(3))
    layout: dict[tuple[int, int], tuple[str, str]] = {}
    for stage in sorted({s for s, _ in entries}):
        block = -1
        for index in sorted(j for s, j in entries if s == stage):
            kind = _entry_kind(stage, index, entries[(stage, index)])
            if kind == "block":
                block += 1
                layout[(stage, index)] = (kind, f"layer{stage}_{block}")
            else:
                if block < 0:
                    raise ValueError(f"layer{stage}.{index}: a {kind.upper()} before the first residual block")
                layout[(stage, index)] = (kind, f"layer{stage}_{block}_{kind}")
    return layout


def infer_arch(state_dict: Mapping[str, Any]) -> str:
    """'sinet', 'sbnet', 'idnet' or 'resnet50', from which plug-ins the state_dict holds."""
    sd = unwrap_state_dict(state_dict)
    kinds = {kind for kind, _ in _layer_layout(sd).values()}
    has_idm, has_sbm = "idm" in kinds, "sbm" in kinds
    return {(True, True): "sinet", (False, True): "sbnet", (True, False): "idnet"}.get((has_idm, has_sbm), "resnet")


def convert_baseline_checkpoint(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' student state_dict (or checkpoint dict) → {'params': …, 'batch_stats': …} with
    the ReIDNet layout (top level: backbone, bnneck, classifier, and projection if present); nested
    dicts of float32 numpy arrays. Raises ValueError on a key it cannot place."""
    sd = unwrap_state_dict(state_dict)
    layout = _layer_layout(sd)
    params: dict[tuple[str, ...], np.ndarray] = {}
    stats: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, leaf = key.rpartition(".")
        m = _LAYER_KEY.match(key)
        if m:
            kind, name = layout[(int(m.group(1)), int(m.group(2)))]
            sub = m.group(3).rpartition(".")[0]  # e.g. 'conv1', 'downsample.0', 'chl_reduction.1'
            path = ("backbone", name, sub.replace(".", "_"))
            _put(params, stats, path, leaf, value, key, conv=(kind == "block"))
        elif module in ("conv1", "bn1"):
            _put(params, stats, ("backbone", module), leaf, value, key, conv=True)
        elif module == "bn":
            _put(params, stats, ("bnneck",), leaf, value, key, conv=False)
        elif module in ("classifier", "projection"):
            _put(params, stats, (module,), leaf, value, key, conv=False)
        else:
            raise ValueError(f"unexpected key {key!r} (shape {value.shape}) in the baseline checkpoint")
    return {"params": flax.traverse_util.unflatten_dict(params),
            "batch_stats": flax.traverse_util.unflatten_dict(stats)}


def load_baseline_checkpoint(checkpoint: str | Mapping[str, Any], params: Any, batch_stats: Any, *,
                             drop: Sequence[str] = (), strict: bool = True,
                             allow_pickle: bool = False) -> tuple[Any, Any]:
    """Copy a baseline student checkpoint (a path, or an already loaded dict) into a ReIDNet's
    variables, returning new (params, batch_stats).

    drop: top-level parts of the checkpoint not to load, e.g. ('classifier',) for another number of
      identities or ('projection',) for a model without `infonce_projection`.
    strict: every leaf of the loaded parts that the model has must come from the file (a model with
      plug-ins the checkpoint lacks, or the reverse, fails). Shapes must always agree.
    Model parts the checkpoint does not cover (the domain discriminators) keep their values.
    """
    where = checkpoint if isinstance(checkpoint, str) else "baseline checkpoint"
    sd = read_baseline_checkpoint(checkpoint, allow_pickle=allow_pickle) if isinstance(checkpoint, str) else checkpoint
    converted = convert_baseline_checkpoint(sd)
    params = flax.core.unfreeze(params)
    batch_stats = flax.core.unfreeze(batch_stats)
    for part in sorted(set(converted["params"]) - set(drop)):
        if part not in params:
            hint = " (build the model with infonce_projection=True, or drop it)" if part == "projection" else ""
            raise ValueError(f"{where}: the checkpoint has {part!r}, which the model does not have{hint}")
        params[part] = merge_pretrained(params[part], converted["params"][part], where=where)
        if part in converted["batch_stats"]:
            batch_stats[part] = merge_pretrained(batch_stats[part], converted["batch_stats"][part], where=where)
        if strict:
            for coll, model_tree, file_tree in (("params", params, converted["params"]),
                                                ("batch_stats", batch_stats, converted["batch_stats"])):
                have = set(flax.traverse_util.flatten_dict(file_tree.get(part, {})))
                need = set(flax.traverse_util.flatten_dict(flax.core.unfreeze(model_tree.get(part, {}))))
                missing = sorted("/".join((part,) + p) for p in need - have)
                if missing:
                    raise ValueError(f"{where}: the model's {coll} {missing[:5]} (of {len(missing)}) are not in the "
                                     "checkpoint; check arch, depth and conv_bias (strict=False keeps them at init)")
    return params, batch_stats


# ---------------------------------------------------------------------------------------------
# The temporal module (MS-TCN) and its domain heads


_TEMPORAL_KEY = re.compile(
    r"^(stage1|stages\.\d+)\.(conv_1x1|conv_out|layers\.(\d+)\.(conv_dilated|conv_1x1))\.(weight|bias)$")
_DISC_MODULES = {"ad_net_base.0.fc1": ("frame_discriminator", "fc1"), "ad_net_cls.0": ("frame_discriminator", "fc2"),
                 "ad_net_seq_base.0.fc1": ("clip_discriminator", "fc1"),
                 "ad_net_seq_cls.0": ("clip_discriminator", "fc2")}


def convert_baseline_temporal(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' `MultiStageModel` state_dict → {'temporal': {'params', 'batch_stats'},
    'frame_discriminator': {'params'}, 'clip_discriminator': {'params'}} for
    `MultiStageTCN` and two `DomainDiscriminator`s (numpy float32)."""
    sd = unwrap_state_dict(state_dict)
    params: dict[tuple[str, ...], np.ndarray] = {}
    stats: dict[tuple[str, ...], np.ndarray] = {}
    disc: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, leaf = key.rpartition(".")
        m = _TEMPORAL_KEY.match(key)
        if m:
            stage = m.group(1).replace(".", "_")
            path = (stage, f"layers_{m.group(3)}", m.group(4)) if m.group(3) is not None else (stage, m.group(2))
            value = value.astype(np.float32)
            if leaf == "bias":
                params[path + ("bias",)] = value
            elif path[-1] == "conv_dilated":  # Conv1d [O, I, 3] → [3, I, O]
                params[path + ("kernel",)] = value.transpose(2, 1, 0)
            else:
                params[path + ("kernel",)] = _dense_kernel(key, value)
        elif module == "bn":
            _put(params, stats, ("bn",), leaf, value, key, conv=False)
        elif module in _DISC_MODULES:
            _put(disc, {}, _DISC_MODULES[module], leaf, value, key, conv=False)
        else:
            raise ValueError(f"unexpected key {key!r} (shape {value.shape}) in the temporal-module state_dict")
    disc_tree = flax.traverse_util.unflatten_dict(disc)
    return {"temporal": {"params": flax.traverse_util.unflatten_dict(params),
                         "batch_stats": flax.traverse_util.unflatten_dict(stats)},
            **{name: {"params": disc_tree[name]} for name in disc_tree}}
