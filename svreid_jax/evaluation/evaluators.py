"""Evaluation protocols as a registry: `config.data.target.protocol` → how query/gallery features become
results.

A protocol takes `ProtocolInputs` and returns {name: ranking.RankingResult or {metric: value}}, the
primary protocol first (its metrics are the unprefixed 'rank1', 'mAP', … of results.json; the others
become '<name>/<metric>').

  standard   one query/gallery ranking ('general'), plus CCVID-style same-clothes / clothes-changing
             results when every tracklet carries a clothes id (CCVID, SVReID-cc)
  mars       MARS: the exclude_query gallery (the authors' protocol) first, then include_query and the
             official 'all' gallery from the same features (evaluation/protocols.py); a target read
             with another `gallery` option is ranked as read, like `standard`

Adding a protocol: one file under evaluation/ with a function `(ProtocolInputs) -> dict` and one
entry in PROTOCOLS below (or `register(...)` from your own code); a target selects it with
`config.data.target.protocol`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import protocols, ranking
from svreid_jax.utils.registry import Registry


@dataclasses.dataclass(frozen=True)
class ProtocolInputs:
    """query_features [Nq, D] / gallery_features [Ng, D] float32 of `query` / `gallery` (the target's test
    split as read with `options`); distance: how distances are made; max_rank: CMC length;
    all_protocols: False asks for the primary protocol only (periodic evaluations)."""

    query_features: np.ndarray
    gallery_features: np.ndarray
    query: Sequence[Tracklet]
    gallery: Sequence[Tracklet]
    distance: protocols.DistanceSpec
    max_rank: int = 50
    all_protocols: bool = True
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


Protocol = Callable[[ProtocolInputs], dict[str, Any]]


def standard(inputs: ProtocolInputs) -> dict[str, ranking.RankingResult]:
    distmat = protocols.distances(inputs.query_features, inputs.gallery_features, inputs.distance)
    return protocols.clothes_protocols(distmat, inputs.query, inputs.gallery, max_rank=inputs.max_rank,
                                       clothes=None if inputs.all_protocols else False)


def mars(inputs: ProtocolInputs) -> dict[str, ranking.RankingResult]:
    if inputs.options.get("gallery", "exclude_query") != "exclude_query":
        return standard(inputs)
    distmat = protocols.distances(inputs.query_features, inputs.gallery_features, inputs.distance)
    if not inputs.all_protocols:
        return {"exclude_query": protocols.rank(distmat, inputs.query, inputs.gallery, max_rank=inputs.max_rank)}
    return protocols.mars_conventions(inputs.query_features, inputs.gallery_features, inputs.query, inputs.gallery,
                                      distance=inputs.distance, max_rank=inputs.max_rank,
                                      all_gallery=protocols.mars_all_gallery(inputs.query), distmat=distmat)


PROTOCOLS = Registry("evaluation protocol", "data.target.protocol", {
    "standard": standard,
    "mars": mars,
})
register, unregister, get = PROTOCOLS.register, PROTOCOLS.unregister, PROTOCOLS.get
