"""Backbones as a registry: `config.model.arch` → the per-frame feature network of ReIDNet.

A backbone maps the frames of B clips, [B·T, H, W, 3] float (T consecutive frames per clip), to
feature maps [B·T, h, w, D]; ReIDNet pools them over space and time. An entry gives:

  options(model_config) -> dict   the backbone's own sub-config read from `config.model` (hashable
                                  values); the ResNet family reads model.depth, width, last_stride,
                                  stem_pool_padding, conv_bias, remat; a new backbone reads its own
                                  fields, e.g. a `config.model.<name>` ConfigDict
  check(options) -> dict          validated options (ValueError naming the field), at model construction
  build(options, *, clip_len, dtype, bn_axis_name, name) -> flax module, called inside ReIDNet
  feature_dim(options) -> D

  resnet                 the plain per-frame ResNet of `model.depth` (18, 34, 50, 101, 'tiny')
  sinet, sbnet, idnet    the ResNet with SINet's plug-ins (IDM + SBM, SBM only, IDM only), which mix the
                         T frames of each clip (models/sinet.py)

Adding a backbone: one file under models/ with those four functions and one entry in BACKBONES (or
`register(...)` from your own code). ImageNet weights (`model.init_from`) load into the parameters named
as torchvision's ResNet (interop/torchvision.py).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from absl import logging

from svreid_jax.models import resnet, sinet
from svreid_jax.utils.registry import Registry


@dataclasses.dataclass(frozen=True)
class Backbone:
    build: Callable[..., Any]
    options: Callable[[Any], dict]
    check: Callable[[Any], dict]
    feature_dim: Callable[[Any], int]


def _sinet_family(arch: str) -> Backbone:
    return Backbone(build=functools.partial(sinet.build_backbone, arch), options=resnet.backbone_options,
                    check=functools.partial(sinet.check_backbone_options, arch),
                    feature_dim=resnet.backbone_feature_dim)


BACKBONES = Registry("backbone", "model.arch", {
    "resnet": Backbone(build=resnet.build_backbone, options=resnet.backbone_options,
                       check=resnet.check_backbone_options, feature_dim=resnet.backbone_feature_dim),
    "sinet": _sinet_family("sinet"),
    "sbnet": _sinet_family("sbnet"),
    "idnet": _sinet_family("idnet"),
})

# Old names that still work, with a warning: 'resnet50' always meant "a plain ResNet of any depth".
ALIASES = {"resnet50": "resnet"}
_warned: set[str] = set()


def canonical_name(name: str) -> str:
    """The registered name for `name` (an alias is resolved, with a warning the first time)."""
    if name in ALIASES:
        new = ALIASES[name]
        if name not in _warned:
            _warned.add(name)
            logging.warning("model.arch=%r is now called %r (a plain ResNet of model.depth, whatever the depth); "
                            "please update your config", name, new)
        return new
    return name


def get(name: str) -> Backbone:
    return BACKBONES.get(canonical_name(name))


def register(name: str, backbone: Backbone) -> None:
    """Make `model.arch=name` build `backbone`; a name may be registered once (aliases included)."""
    if name in ALIASES:
        raise ValueError(f"backbone {name!r} is already registered")
    BACKBONES.register(name, backbone)


unregister = BACKBONES.unregister
