"""torchvision ResNet state_dict → Linen variables of `svreid_jax.models.resnet.ResNet`, and loading
ImageNet weights into the re-ID model.

Works on a mapping of torch tensors or numpy arrays: `.safetensors` files (read with safetensors'
numpy API) and `.npz` files (written by `python -m svreid_jax.interop.convert`) need no torch; `.pth`
files need the torch extra. `check_resnet_state_dict` checks a state_dict against the tensors a
torchvision ResNet of the configured depth holds, naming any tensor that is missing, unknown or of
the wrong shape, so a partial file never leaves part of the backbone at random initialisation.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np
import safetensors
import safetensors.numpy

from svreid_jax.models import resnet

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


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a `.safetensors` file as numpy (safetensors' numpy API; no torch)."""
    try:
        return dict(safetensors.numpy.load_file(path))
    except (safetensors.SafetensorError, ValueError, TypeError) as e:
        # bfloat16 tensors land here too: numpy has no such dtype.
        raise ValueError(f"{path}: cannot read it as a safetensors file of numpy-readable tensors ({e})") from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a `.safetensors` or `.npz` (no torch needed) or a torch `.pth`/`.pt` (needs the `torch` extra)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model.init_from: weight file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
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


def expected_resnet_tensors(depth: int | str, width: int | None = None,
                            num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """{state_dict key: shape} of a torchvision ResNet of `depth` (stage sizes and block kind from
    models.resnet.PRESETS; width = channels of the stem, 64 for the ImageNet models) without the
    `num_batches_tracked` counters. With `num_classes` the classifier `fc.weight` [num_classes, D] and
    `fc.bias` are included.

    Convs are [out, in, kh, kw]; BatchNorms have weight, bias, running_mean, running_var of [C].
    """
    stage_sizes, block, default_width = resnet._preset(depth)
    w = default_width if width is None else int(width)
    expansion = 4 if block == "bottleneck" else 1
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(conv: str, bn: str, cout: int, cin: int, k: int) -> None:
        shapes[f"{conv}.weight"] = (cout, cin, k, k)
        shapes.update({f"{bn}.{leaf}": (cout,) for leaf in ("weight", "bias", "running_mean", "running_var")})

    conv_bn("conv1", "bn1", w, 3, 7)
    cin = w
    for s, blocks in enumerate(stage_sizes, start=1):
        planes = w * 2 ** (s - 1)
        out = planes * expansion
        for b in range(blocks):
            p = f"layer{s}.{b}"
            if block == "bottleneck":
                conv_bn(f"{p}.conv1", f"{p}.bn1", planes, cin, 1)
                conv_bn(f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
                conv_bn(f"{p}.conv3", f"{p}.bn3", out, planes, 1)
            else:
                conv_bn(f"{p}.conv1", f"{p}.bn1", planes, cin, 3)
                conv_bn(f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
            # The first block of a stage changes resolution (stages 2-4) or width: a 1×1 projection.
            if b == 0 and (s > 1 or cin != out):
                conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", out, cin, 1)
            cin = out
    if num_classes is not None:
        shapes["fc.weight"] = (int(num_classes), cin)
        shapes["fc.bias"] = (int(num_classes),)
    return shapes


def check_resnet_state_dict(state_dict: Mapping[str, Any], depth: int | str, width: int | None = None, *,
                            where: str, num_classes: int | None = None) -> None:
    """Raise a ValueError naming the first tensor of `state_dict` that a torchvision ResNet of `depth`
    (and `width`) does not hold, holds with another shape, or holds but the file lacks.

    `num_batches_tracked` counters are optional. The classifier (`fc.*`) is checked only when
    `num_classes` is given; otherwise it may be present with any number of classes, or absent.
    """
    expected = expected_resnet_tensors(depth, width, num_classes)
    name = f"ResNet-{depth}" + (f" of width {width}" if width not in (None, resnet._preset(depth)[2]) else "")
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] + ".running_mean" in expected:
            continue
        if num_classes is None and key in ("fc.weight", "fc.bias"):
            continue
        if key not in expected:
            raise ValueError(f"{where}: tensor {key!r} (shape {tuple(np.shape(value))}) is not part of a "
                             f"torchvision {name}; check model.depth")
        if tuple(np.shape(value)) != expected[key]:
            raise ValueError(f"{where}: tensor {key!r} has shape {tuple(np.shape(value))}, expected "
                             f"{expected[key]} for a torchvision {name}")
    missing = [k for k in expected if k not in state_dict]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{where}: tensor {missing[0]!r}{more} of a torchvision {name} is missing")


def load_backbone_weights(weights: str | Mapping[str, Any], params: Any, batch_stats: Any,
                          backbone_name: str = "backbone", *, where: str | None = None) -> tuple[Any, Any]:
    """Load ImageNet ResNet weights (a file path, or a state_dict already read) into the re-ID model's
    backbone sub-tree; leaves the file does not have (plug-ins, conv biases) keep their values."""
    if isinstance(weights, str):
        where = where or weights
        weights = read_state_dict(weights)
    where = where or "ImageNet weights"
    converted = convert_torchvision_resnet(weights)
    params = flax.core.unfreeze(params)
    batch_stats = flax.core.unfreeze(batch_stats)
    if backbone_name not in params:
        raise ValueError(f"the model has no sub-module {backbone_name!r} to load {where} into")
    params[backbone_name] = merge_pretrained(params[backbone_name], converted["params"], where=where)
    batch_stats[backbone_name] = merge_pretrained(batch_stats[backbone_name], converted["batch_stats"], where=where)
    return params, batch_stats
