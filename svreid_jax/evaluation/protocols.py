"""Evaluation protocols on top of `ranking`: which gallery, which matches count, over which splits.

Everything here takes features that are already extracted, so one extraction serves several protocols:

* `clothes_protocols`: CCVID-style general / same-clothes (SC) / clothes-changing (CC) results from one
  distance matrix (docs/METHOD.md §7.3, §7.5); SC and CC need a clothes id on every query and
  gallery tracklet (the CCVID and SVReID-cc readers set them).
* `mars_conventions`: the three MARS galleries (docs/METHOD.md §7.4) from the features of the
  `exclude_query` split (the reader's default and the reference's protocol): `include_query` appends the
  query features to the gallery (AP3D / CAL style); `all` ranks against every test tracklet in the order
  of `tracks_test_info` (the official MATLAB gallery — the same set as `include_query`, so the two differ
  only where distances tie). AP stays the non-interpolated AP of `ranking` in all three; the official
  MATLAB code's trapezoidal AP is not reproduced. In `include_query` / `all` each query meets its own
  copy in the gallery: same identity, same camera, so it is junk and removed, as in those codebases.
* `evaluate_splits`: iLIDS-VID / PRID mean ± std over the 10 train/test splits, extracting each distinct
  tracklet once (a tracklet is in the test half of several splits).
* `markdown_table`, `flatten`, `unflatten`: results as one table with a row per protocol, and as the
  flat {'rank1': …, '<protocol>/rank1': …} dicts that the training logs store.

Distances are `ranking.pairwise_distance` under `DistanceSpec.metric`, optionally re-ranked
(`DistanceSpec.rerank`, k-reciprocal, `rerank.py`). `camera_normalised` (eval.camera_normalise) is a
step before them, on the features of the whole test split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from svreid_jax import ops
from svreid_jax.data import datasets
from svreid_jax.data.records import DatasetError, DatasetSplits, Tracklet
from svreid_jax.evaluation import ranking
from svreid_jax.evaluation import rerank as rerank_lib
from svreid_jax.utils import atomic

RANKS = (1, 5, 10, 20)
METRIC_KEYS = tuple(f"rank{r}" for r in RANKS) + ("mAP",)
GENERAL, SAME_CLOTHES, CLOTHES_CHANGING = "general", "same_clothes", "clothes_changing"
MARS_CONVENTIONS = ("exclude_query", "include_query", "all")
STD = "std"  # flat-dict prefix of the standard deviations of a multi-split result
_CLOTHES_MODES = {GENERAL: "standard", SAME_CLOTHES: "same_clothes", CLOTHES_CHANGING: "clothes_changing"}


# ---------------------------------------------------------------------------------------------------------
# Distances


@dataclasses.dataclass(frozen=True)
class DistanceSpec:
    """How query-gallery distances are made: a metric of `ranking.METRICS`, optionally k-reciprocal re-ranked."""

    metric: str = "cosine"
    rerank: bool = False
    k1: int = rerank_lib.K1
    k2: int = rerank_lib.K2
    lambda_value: float = rerank_lib.LAMBDA

    @classmethod
    def from_config(cls, config) -> "DistanceSpec":
        e = config.eval
        return cls(metric=e.distance, rerank=bool(e.rerank), k1=int(e.rerank_k1), k2=int(e.rerank_k2),
                   lambda_value=float(e.rerank_lambda))

    def describe(self) -> str:
        text = {"cosine": "cosine", "euclidean": "Euclidean", "inner": "raw inner product"}[self.metric]
        if self.rerank:
            text += f", k-reciprocal re-ranking (k1={self.k1}, k2={self.k2}, λ={self.lambda_value:g})"
        return text


def distances(query_features, gallery_features, spec: DistanceSpec) -> jax.Array:
    """[Nq, Ng] distances under `spec` (smaller = more similar)."""
    if spec.metric not in ranking.METRICS:
        raise ValueError(f"unknown distance metric {spec.metric!r}; expected one of {ranking.METRICS}")
    if spec.rerank:
        return rerank_lib.rerank_features(query_features, gallery_features, metric=spec.metric, k1=spec.k1, k2=spec.k2,
                                      lambda_value=spec.lambda_value)
    return ranking.pairwise_distance(query_features, gallery_features, metric=spec.metric)


def camera_normalised(query_features, gallery_features, query: Sequence[Tracklet], gallery: Sequence[Tracklet]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(query [Nq, D], gallery [Ng, D]) float32 features, each minus the mean feature of its camera over
    query ∪ gallery (`ops.camera_centred`, means in float64, not L2-normalised).

    Label-free (camera ids come with every test protocol), so it is a test-time step, not adaptation.
    One set of camera means for the whole test split: every gallery built from these features (the
    MARS include_query / all galleries re-use them) sees the same normalisation.
    """
    q, g = np.asarray(query_features), np.asarray(gallery_features)
    cams = np.concatenate([labels(query)[1], labels(gallery)[1]])
    both = ops.camera_centred(np.concatenate([q, g], axis=0), cams, dtype=np.float64)
    return both[:len(q)], both[len(q):]


# ---------------------------------------------------------------------------------------------------------
# One ranking


def summarize(result: ranking.RankingResult) -> dict[str, float]:
    """{'rank1','rank5','rank10','rank20','mAP','num_valid_queries','num_skipped_queries'} as floats."""
    return result.summary(RANKS)


PER_QUERY_FORMAT = "svreid_jax.per_query"


def query_key(t: Tracklet) -> str:
    """'<pid>/<camid>/<first frame's file name>': names a query the same way under any data root, so that
    two runs' per-query outcomes can be paired query by query."""
    return f"{t.pid}/{t.camid}/{os.path.basename(t.frames[0])}"


def per_query(result: ranking.RankingResult, query: Sequence[Tracklet], protocol: str) -> dict:
    """Each query's outcome under one protocol, in query order: {'format', 'protocol', 'query': [query_key …],
    'first_match_rank': [int, 0-based, −1 = no good match], 'average_precision': [float, None = no good
    match]}. R-1 is the share of rank 0 among the queries with a match, mAP the mean of their APs.

    Why: R-1 over a test set of a few hundred queries moves by whole queries; two runs on the same
    queries are compared far more finely query by query (benchmarks/adaptation.py --paired) than by
    their means."""
    if len(query) != len(result.first_match_rank):
        raise ValueError(f"{len(result.first_match_rank)} ranked queries for {len(query)} query tracklets")
    ap = [None if math.isnan(v) else float(v) for v in np.asarray(result.average_precision, np.float64)]
    return {"format": PER_QUERY_FORMAT, "protocol": protocol, "query": [query_key(t) for t in query],
            "first_match_rank": [int(r) for r in result.first_match_rank], "average_precision": ap}


def write_per_query(directory: str, name: str, outcomes: Mapping) -> str:
    """<directory>/<name>.json (atomic; OutputError naming the file when the write fails). It always
    describes the latest evaluation of that name: unlike `write_results` it keeps no earlier copy."""
    path = os.path.join(directory, f"{name}.json")
    with writing(path):
        atomic.write_text(path, json.dumps(outcomes) + "\n")
    return path


def labels(tracklets: Sequence[Tracklet]) -> tuple[np.ndarray, np.ndarray]:
    """(pids int64 [N], camids int64 [N])."""
    return (np.array([t.pid for t in tracklets], np.int64).reshape(-1),
            np.array([t.camid for t in tracklets], np.int64).reshape(-1))


def clothes_ids(tracklets: Sequence[Tracklet]) -> np.ndarray | None:
    """int64 [N] clothes ids, or None unless every tracklet has one."""
    if not tracklets or any(t.clothes_id is None for t in tracklets):
        return None
    return np.array([t.clothes_id for t in tracklets], np.int64)


def rank(distmat, query: Sequence[Tracklet], gallery: Sequence[Tracklet], *, max_rank: int = 50,
         mode: str = "standard") -> ranking.RankingResult:
    """`ranking.evaluate_ranking` with the labels (and clothes ids, for the clothes modes) read off the tracklets."""
    q_pids, q_cams = labels(query)
    g_pids, g_cams = labels(gallery)
    kwargs = {}
    if mode != "standard":
        q_clothes, g_clothes = clothes_ids(query), clothes_ids(gallery)
        if q_clothes is None or g_clothes is None:
            raise ValueError(f"protocol {mode!r} needs a clothes id on every query and gallery tracklet")
        kwargs = dict(q_clothes=q_clothes, g_clothes=g_clothes)
    return ranking.evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, mode=mode, **kwargs)


def clothes_protocols(distmat, query: Sequence[Tracklet], gallery: Sequence[Tracklet], *, max_rank: int = 50,
                      clothes: bool | None = None) -> dict[str, ranking.RankingResult]:
    """{'general': …} plus 'same_clothes' and 'clothes_changing' from one distance matrix.

    clothes: None (default) adds SC/CC when every query and gallery tracklet has a clothes id; True requires
    them (ValueError otherwise); False gives the general result only.
    """
    out = {GENERAL: rank(distmat, query, gallery, max_rank=max_rank)}
    known = clothes_ids(query) is not None and clothes_ids(gallery) is not None
    if clothes is None:
        clothes = known
    if clothes:
        for name in (SAME_CLOTHES, CLOTHES_CHANGING):
            out[name] = rank(distmat, query, gallery, max_rank=max_rank, mode=_CLOTHES_MODES[name])
    return out


# ---------------------------------------------------------------------------------------------------------
# MARS galleries


def _key(t: Tracklet) -> tuple:
    return t.frames


def mars_conventions(query_features, gallery_features, query: Sequence[Tracklet], gallery: Sequence[Tracklet], *,
                     distance: DistanceSpec = DistanceSpec(), max_rank: int = 50,
                     all_gallery: Sequence[Tracklet] | None = None,
                     distmat=None) -> dict[str, ranking.RankingResult]:
    """The MARS gallery conventions from the features of the `exclude_query` split, without re-extracting.

    query_features [Nq, D] / gallery_features [Ng, D]: of `query` / `gallery` as read with gallery='exclude_query'.
    all_gallery: the test tracklets in official order (`mars_all_gallery`); without it 'all' is left out.
      Each must be one of query ∪ gallery (matched by frame paths), else ValueError.
    distmat: the exclude_query distances if already computed (saves one matrix).
    Returns {'exclude_query': …, 'include_query': …[, 'all': …]}.
    """
    q = np.asarray(query_features, np.float32)
    g = np.asarray(gallery_features, np.float32)
    if q.shape[0] != len(query) or g.shape[0] != len(gallery):
        raise ValueError(f"features ({q.shape[0]}, {g.shape[0]}) do not match the query/gallery sizes "
                         f"({len(query)}, {len(gallery)})")
    if distmat is None:
        distmat = distances(q, g, distance)
    out = {"exclude_query": rank(distmat, query, gallery, max_rank=max_rank)}
    with_query = np.concatenate([g, q], axis=0)
    out["include_query"] = rank(distances(q, with_query, distance), query, tuple(gallery) + tuple(query),
                                max_rank=max_rank)
    if all_gallery is not None:
        row = {}
        for i, t in enumerate(tuple(gallery) + tuple(query)):
            row.setdefault(_key(t), i)
        missing = [t for t in all_gallery if _key(t) not in row]
        if missing:
            raise ValueError(f"{len(missing)} tracklets of the 'all' gallery (first: {missing[0].frames[0]}) are "
                             "neither query nor gallery tracklets of the exclude_query split")
        order = np.array([row[_key(t)] for t in all_gallery], np.int64)
        out["all"] = rank(distances(q, with_query[order], distance), query, tuple(all_gallery), max_rank=max_rank)
    return out


def mars_root(tracklet: Tracklet) -> str:
    """The MARS root of a test tracklet read by the mars reader (frames are <root>/bbox_test/<pid4>/<name>)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(tracklet.frames[0])))


def mars_all_gallery(query: Sequence[Tracklet]) -> tuple[Tracklet, ...] | None:
    """Every MARS test tracklet in `tracks_test_info` order, re-read from the root the query frames live in.

    Only the lists and .mat files are read (check_frames=False). None, with a warning, when they cannot be
    read there (e.g. tracklets that did not come from the mars reader).
    """
    if not query:
        return None
    root = mars_root(query[0])
    try:
        return datasets.load("mars", root, gallery="all", check_frames=False).gallery
    except (DatasetError, OSError) as e:
        logging.warning("MARS 'all' gallery left out: cannot re-read the test list under %s (%s)", root, e)
        return None


# ---------------------------------------------------------------------------------------------------------
# Several train/test splits (iLIDS-VID, PRID)


@dataclasses.dataclass(frozen=True)
class SplitsResult:
    """Per-split metrics and their mean and standard deviation (sample std, ddof=1; 0 for one split)."""

    split_ids: tuple[int, ...]
    per_split: tuple[dict[str, float], ...]
    mean: dict[str, float]
    std: dict[str, float]

    def flat(self) -> dict[str, float]:
        """{'rank1': mean, …, 'std/rank1': …, 'split_0/rank1': …} (see `unflatten`)."""
        out = dict(self.mean)
        out.update({f"{STD}/{k}": v for k, v in self.std.items()})
        for s, metrics in zip(self.split_ids, self.per_split):
            out.update({f"split_{s}/{k}": v for k, v in metrics.items()})
        return out


def mean_std(per_split: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) of each key over the splits."""
    if not per_split:
        raise ValueError("no splits to average")
    keys = list(per_split[0])
    values = {k: np.array([m[k] for m in per_split], np.float64) for k in keys}
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    std = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std


def evaluate_splits(load_split: Callable[[int], DatasetSplits],
                    features_fn: Callable[[Sequence[Tracklet]], np.ndarray], *,
                    distance: DistanceSpec = DistanceSpec(), max_rank: int = 50,
                    split_ids: Iterable[int] = range(10), camera_normalise: bool = False) -> SplitsResult:
    """Standard-protocol metrics of every split, and their mean ± std.

    load_split(split_id) -> DatasetSplits (its query/gallery are used); features_fn(tracklets) -> [N, D]
    features. Each distinct tracklet (by frame paths) is embedded once, however many splits test it.
    Queries without a good match are skipped per split, as in a single-split evaluation.
    camera_normalise: `camera_normalised` per split (camera means over that split's query ∪ gallery).
    """
    split_ids = tuple(int(s) for s in split_ids)
    loaded = [load_split(s) for s in split_ids]
    unique: dict[tuple, int] = {}
    tracklets: list[Tracklet] = []
    for splits in loaded:
        for t in tuple(splits.query) + tuple(splits.gallery):
            if _key(t) not in unique:
                unique[_key(t)] = len(tracklets)
                tracklets.append(t)
    feats = np.asarray(features_fn(tracklets), np.float32)
    if feats.shape[0] != len(tracklets):
        raise ValueError(f"features_fn returned {feats.shape[0]} rows for {len(tracklets)} tracklets")
    per_split = []
    for s, splits in zip(split_ids, loaded):
        q = feats[[unique[_key(t)] for t in splits.query]]
        g = feats[[unique[_key(t)] for t in splits.gallery]]
        if camera_normalise:
            q, g = camera_normalised(q, g, splits.query, splits.gallery)
        metrics = summarize(rank(distances(q, g, distance), splits.query, splits.gallery, max_rank=max_rank))
        logging.info("split %d: rank-1 %.1f%%, mAP %.1f%%", s, 100 * metrics["rank1"], 100 * metrics["mAP"])
        per_split.append(metrics)
    mean, std = mean_std(per_split)
    return SplitsResult(split_ids=split_ids, per_split=tuple(per_split), mean=mean, std=std)


# ---------------------------------------------------------------------------------------------------------
# Reporting


def flatten(results: Mapping[str, ranking.RankingResult | Mapping[str, float]]) -> dict[str, float]:
    """The first protocol's metrics unprefixed, the others as '<protocol>/<metric>'."""
    out: dict[str, float] = {}
    for i, (name, res) in enumerate(results.items()):
        metrics = summarize(res) if isinstance(res, ranking.RankingResult) else dict(res)
        out.update(metrics if i == 0 else {f"{name}/{k}": v for k, v in metrics.items()})
    return out


def primary_label(metrics: Mapping[str, float]) -> str:
    """The name of the unprefixed protocol of a flat dict, as the protocols of evaluation/evaluators.py and `evaluate_splits` make them."""
    names = {k.split("/", 1)[0] for k in metrics if "/" in k}
    if STD in names:
        num = len({n for n in names if n.startswith("split_")})
        return f"mean ± std ({num} splits)"
    if "include_query" in names or "all" in names:
        return "exclude_query"
    if SAME_CLOTHES in names or CLOTHES_CHANGING in names:
        return GENERAL
    return "target"


def unflatten(metrics: Mapping[str, float], primary: str | None = None
              ) -> tuple[dict[str, dict[str, float]], dict[str, float] | None]:
    """(rows {protocol: metrics} with the primary first, the primary's std or None) from a flat dict."""
    primary = primary or primary_label(metrics)
    rows: dict[str, dict[str, float]] = {primary: {k: v for k, v in metrics.items() if "/" not in k}}
    std = None
    for key, value in metrics.items():
        if "/" in key:
            name, metric = key.split("/", 1)
            if name == STD:
                std = std or {}
                std[metric] = value
            else:
                rows.setdefault(name, {})[metric] = value
    return rows, std


def _cell(value: float, std: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}" if std is None else f"{100 * value:.1f} ± {100 * std:.1f}"


def markdown_table(rows: Mapping[str, Mapping[str, float]], title: str,
                   std: Mapping[str, float] | None = None) -> str:
    """| title | R-1 | R-5 | R-10 | R-20 | mAP | with one row per protocol, in percent.

    std: standard deviations of the *first* row's metrics, shown as 'mean ± std'.
    """
    cols = [f"R-{r}" for r in RANKS] + ["mAP"]
    lines = [f"| {title} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i, (label, metrics) in enumerate(rows.items()):
        cells = [_cell(metrics.get(k), std.get(k) if (std and i == 0) else None) for k in METRIC_KEYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class OutputError(OSError):
    """A result file or folder that could not be written (a full disk, no permission); one line naming it
    and saying that the previous one is as it was."""


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an OSError of the block (an atomic write of `path`) into OutputError naming `path`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        reason = err.strerror or " ".join(str(err).split())
        error = OutputError(f"could not write {path}: {reason}; the previous one, if any, is as it was")
        error.errno = err.errno
        raise error from err


def write_results(directory: str, name: str, data: Mapping, markdown: str) -> tuple[str, str]:
    """Write <directory>/<name>.json (data) and <directory>/<name>.md (markdown); return both paths.

    Each file is replaced atomically (utils/atomic.py: a full disk or a crash leaves the previous file
    whole). Results are never overwritten: when <name>.json already holds something else (a rerun with
    other eval.* settings, an evaluation after a stopped run, an unreadable file; timings such as
    'extract_sec' do not count), the earlier pair is first kept as
    <name>-<n>.json / .md (n = 1, 2, … the next free number; `earlier_results` lists them) and a warning
    names it. Rewriting identical results keeps nothing extra. The .md is written before the .json, so a
    <name>.json that is new always has its table beside it. OutputError (an OSError, one line naming the
    file) when a write fails.
    """
    json_path, md_path = os.path.join(directory, f"{name}.json"), os.path.join(directory, f"{name}.md")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"  # serialised before any file is touched
    with writing(json_path):
        os.makedirs(directory, exist_ok=True)
        kept = _keep_earlier(directory, name, text)
        if kept:
            logging.warning("%s held other results; the earlier ones are kept as %s (and .md)", json_path, kept)
        atomic.write_text(md_path, markdown.rstrip("\n") + "\n")
        atomic.write_text(json_path, text)
    return json_path, md_path


def earlier_results(directory: str, name: str) -> list[str]:
    """The paths of the kept <name>-<n>.json in `directory`, oldest (n = 1) first."""
    return [os.path.join(directory, f"{name}-{n}.json") for n in _earlier_numbers(directory, name)]


def _earlier_numbers(directory: str, name: str) -> list[int]:
    prefix, numbers = f"{name}-", []
    for entry in os.listdir(directory):
        stem, ext = os.path.splitext(entry)
        if ext == ".json" and stem.startswith(prefix) and stem[len(prefix):].isdigit() and stem[len(prefix)] != "0":
            numbers.append(int(stem[len(prefix):]))
    return sorted(numbers)


def _without_timings(value):
    # Wall-clock timings ('extract_sec') differ between two evaluations of the same features.
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not str(k).endswith("_sec")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _same_results(earlier: bytes, text: str) -> bool:
    try:
        # Compared as canonical text: NaN (a metric without queries) equals NaN there.
        a, b = (json.dumps(_without_timings(json.loads(t)), sort_keys=True) for t in (earlier, text))
        return a == b
    except ValueError:  # an unreadable earlier file is kept, whatever it holds
        return False


def _keep_earlier(directory: str, name: str, text: str) -> str | None:
    """Copy <name>.json / .md to the next free <name>-<n>.* when <name>.json differs from `text`; its path."""
    json_path = os.path.join(directory, f"{name}.json")
    try:
        with open(json_path, "rb") as f:
            earlier = f.read()
    except FileNotFoundError:
        return None
    if earlier == text.encode("utf-8") or _same_results(earlier, text):
        return None
    n = max(_earlier_numbers(directory, name), default=0) + 1
    kept = os.path.join(directory, f"{name}-{n}.json")
    md_path = os.path.join(directory, f"{name}.md")
    if os.path.exists(md_path):
        with open(md_path, "rb") as f:
            atomic.write_bytes(os.path.join(directory, f"{name}-{n}.md"), f.read())
    atomic.write_bytes(kept, earlier)  # last: a numbered .json is the sign that the pair is complete
    return kept


__all__ = [
    "CLOTHES_CHANGING", "DistanceSpec", "GENERAL", "MARS_CONVENTIONS", "OutputError", "RANKS", "SAME_CLOTHES",
    "SplitsResult", "camera_normalised", "clothes_protocols", "distances", "earlier_results", "evaluate_splits",
    "flatten", "markdown_table", "mars_all_gallery", "mars_conventions", "mean_std", "primary_label", "rank",
    "summarize", "unflatten", "write_results", "writing",
]
