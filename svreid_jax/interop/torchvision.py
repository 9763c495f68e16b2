"""torchvision ResNet state_dict → Linen variables of `svreid_jax.models.resnet.ResNet`, and loading
ImageNet weights into the re-ID model.

Works on a mapping of torch tensors or numpy arrays, so an `.npz` written by
`python -m svreid_jax.interop.convert` needs no torch.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _module_path(torch_module: str) -> tuple[str, ...]:
    """'layer1.0.downsample.0' → ('layer1_0', 'downsample_0'); 'bn1' → ('bn1',)."""
    match = _BLOCK.match(torch_module)
    if match:
        stage, block, rest = match.groups()
        return (f"layer{stage}_{block}", *rest.replace("downsample.", "downsample_").split("."))
    return tuple(torch_module.split("."))


def convert_torchvision_resnet(state_dict: Mapping[str, Any], *, include_fc: bool = False) -> dict[str, Any]:
    """Map torchvision ResNet keys to {'params': ..., 'batch_stats': ...} (nested dicts of numpy).

    conv weight OIHW → kernel HWIO; linear weight (out, in) → kernel (in, out); BN weight/bias →
    scale/bias in params, running_mean/var → mean/var in batch_stats; num_batches_tracked dropped.
    """
    params: dict[tuple[str, ...], np.ndarray] = {}
    stats: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, leaf = key.rpartition(".")
        if module.startswith("fc") and not include_fc:
            continue
        path = _module_path(module)
        array = _to_numpy(value).astype(np.float32)
        if leaf == "weight" and array.ndim == 4:
            params[path + ("kernel",)] = array.transpose(2, 3, 1, 0)
        elif leaf == "weight" and array.ndim == 2:
            params[path + ("kernel",)] = array.T
        elif leaf == "weight" and array.ndim == 1:
            params[path + ("scale",)] = array
        elif leaf == "bias":
            params[path + ("bias",)] = array
        elif leaf == "running_mean":
            stats[path + ("mean",)] = array
        elif leaf == "running_var":
            stats[path + ("var",)] = array
        else:
            raise ValueError(f"unexpected torchvision key {key!r} with shape {array.shape}")
    return {"params": flax.traverse_util.unflatten_dict(params),
            "batch_stats": flax.traverse_util.unflatten_dict(stats)}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a `.npz` (no torch needed) or a torch `.pth`/`.pt` (needs the `torch` extra)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model.init_from: weight file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch file; install the extra (pip install -e '.[torch]') or convert it once "
            f"with `python -m svreid_jax.interop.convert --in={path} --out=weights.npz` where torch is available"
        ) from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    return {k.removeprefix("module."): _to_numpy(v) for k, v in obj.items()}


def merge_pretrained(target: Any, pretrained: Any, *, where: str) -> Any:
    """Copy every pretrained leaf into `target` (same path), checking shapes.

    Leaves of target that the file does not have keep their initial values (e.g. conv biases the
    reference adds to a bias-free ImageNet net). Raises on a pretrained leaf that target lacks or
    whose shape differs, naming the leaf.
    """
    flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
    for path, value in flax.traverse_util.flatten_dict(pretrained).items():
        name = "/".join(path)
        if path not in flat_target:
            raise ValueError(f"{where}: the weight file has {name!r}, which the model does not have")
        if tuple(flat_target[path].shape) != tuple(value.shape):
            raise ValueError(f"{where}: {name!r} has shape {tuple(value.shape)} in the file but "
                             f"{tuple(flat_target[path].shape)} in the model")
        flat_target[path] = np.asarray(value, flat_target[path].dtype)
    return flax.traverse_util.unflatten_dict(flat_target)


def load_backbone_weights(path: str, params: Any, batch_stats: Any, backbone_name: str = "backbone") -> tuple[Any, Any]:
    """Load ImageNet ResNet weights from `path` into the re-ID model's backbone sub-tree."""
    converted = convert_torchvision_resnet(read_state_dict(path))
    params = flax.core.unfreeze(params)
    batch_stats = flax.core.unfreeze(batch_stats)
    if backbone_name not in params:
        raise ValueError(f"the model has no sub-module {backbone_name!r} to load {path} into")
    params[backbone_name] = merge_pretrained(params[backbone_name], converted["params"], where=path)
    batch_stats[backbone_name] = merge_pretrained(batch_stats[backbone_name], converted["batch_stats"], where=path)
    return params, batch_stats
