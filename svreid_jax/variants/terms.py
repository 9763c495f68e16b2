"""The loss terms of the train objective, as an explicit table: name → weight field(s) → function → inputs.

Each `LossTerm` says which `config.loss` field weighs each value it returns, which forwards it reads
('source': the student on the labelled source clips; 'target': the student on the target clips;
'teacher': the EMA teacher on the target clips) and how to compute it from a `TermContext`. A step
computes the active terms in table order and sums `weight · value`; a term whose weights are all zero
is skipped, and so is any forward that no active term reads (faster ablations). docs/METHOD.md §4
gives the equations.

Adding a term: write its function here (pure maths may live in svreid_jax/losses.py), add one
`LossTerm` to TERMS (or call `register` from your own code; it comes after the method's terms) and its
weight field, with a comment, to configs/default.py.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from svreid_jax import losses
from svreid_jax.utils.registry import Registry

SOURCE, TARGET, TEACHER = "source", "target", "teacher"
_INPUTS = (SOURCE, TARGET, TEACHER)


class TermContext:
    """What a term may read. Arrays of the whole batch under pmap go through `gather`.

    source: student outputs on the source clips (ReIDNet output dict); labels: int32 [B] source pids;
    target: student outputs on the target clips, computed on first access (`target_forward`);
    teacher: teacher outputs on the target clips (no gradient) or None; target_camid: int32 [B'] or None;
    kmeans_key: the PRNG key shared by all devices for clustering; gather: this device's items → the
    global batch (identity without pmap); infonce_sum_groups: InfoNCE normalised as the authors' code
    does, G × the mean over pairs (the reference variant's `reference.infonce_sum_groups`, docs/METHOD.md §4.3).
    extra: the variant's own state (TrainState.variant_state) or None; the plus variant's cluster memory
    {'labels': int32 [N_target_train] (−1 outlier), 'memory': float32 [M, D], 'valid': bool [M]};
    target_index: int32 [B'] indices of the target clips' tracklets in target.train, or None.
    keep: what terms leave for the step after the gradient (e.g. the embeddings a memory update reads).
    """

    def __init__(self, config, *, source: dict, labels: jax.Array, gather: Callable = lambda x: x,
                 target_forward: Callable[[], dict] | None = None, teacher: dict | None = None,
                 target_camid: jax.Array | None = None, kmeans_key: jax.Array | None = None,
                 infonce_sum_groups: bool = False, extra=None, target_index: jax.Array | None = None):
        self.config = config
        self.extra = extra
        self.target_index = target_index
        self.keep: dict[str, jax.Array] = {}
        self.source = source
        self.labels = labels
        self.gather = gather
        self.infonce_sum_groups = infonce_sum_groups
        self.teacher = teacher
        self.target_camid = target_camid
        self.kmeans_key = kmeans_key
        self._target_forward = target_forward
        self._target = None

    @property
    def target(self) -> dict:
        if self._target is None:
            if self._target_forward is None:
                raise ValueError("this loss term reads the target forward, which the step did not provide")
            self._target = self._target_forward()
        return self._target


# A term's function: context → (values keyed like `weights`, extra metrics to log).
TermFn = Callable[[TermContext], tuple[dict[str, jax.Array], dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One entry of the objective.

    name: the term's name (for errors and docs).
    weights: value key → `config.loss` field holding its weight; the keys are also the metric names.
    needs: which forwards it reads (subset of 'source', 'target', 'teacher').
    fn: context → (values, metrics); values must carry exactly the keys of `weights`.
    always: computed and logged even at weight 0 (the source re-ID terms: their forward runs anyway).
    ramped: its weights follow the consistency ramp-up (adaptation.consistency_rampup_steps).
    """

    name: str
    weights: Mapping[str, str]
    needs: frozenset[str]
    fn: TermFn
    always: bool = False
    ramped: bool = False

    def __post_init__(self):
        unknown = set(self.needs) - set(_INPUTS)
        if unknown:
            raise ValueError(f"loss term {self.name!r}: needs {sorted(unknown)}; expected some of {_INPUTS}")

    def weight_values(self, config) -> dict[str, float]:
        out = {}
        for key, field in self.weights.items():
            if field not in config.loss:
                raise ValueError(f"loss term {self.name!r} is weighted by config.loss.{field}, which the config "
                                 "does not have; add it (with a comment) to configs/default.py")
            out[key] = config.loss[field]
        return out

    def active(self, config) -> bool:
        return self.always or any(w > 0 for w in self.weight_values(config).values())


# ---------------------------------------------------------------------------------------------
# The terms of the method (docs/METHOD.md §4)


def _cross_entropy(ctx: TermContext):
    out = ctx.source
    ce = losses.cross_entropy(out["logits"], ctx.labels, ctx.config.loss.label_smoothing)
    # A per-item mean: under pmap the pmean of the gradients makes it the global mean.
    return {"ce": ce}, {"accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == ctx.labels)}


def _triplet(ctx: TermContext):
    w = ctx.config.loss
    value = losses.batch_hard_triplet(ctx.gather(ctx.source["bn_embedding"]), ctx.gather(ctx.labels),
                                      w.triplet_margin, w.triplet_metric)
    return {"triplet": value}, {}


def _infonce(ctx: TermContext):
    # Groups are the K clips of one identity, contiguous in P×K batches (and across devices); the
    # gathered batch holds all of them, as the authors' DataParallel gathers before its criterion.
    value = losses.temporal_infonce(ctx.gather(ctx.source["projection"]), ctx.config.batch.num_instances,
                                    ctx.config.loss.infonce_temperature, sum_groups=ctx.infonce_sum_groups)
    return {"infonce": value}, {}


def _domain(level: str) -> TermFn:
    def fn(ctx: TermContext):
        s = ctx.gather(ctx.source[f"{level}_domain_logits"])
        t = ctx.gather(ctx.target[f"{level}_domain_logits"])
        return ({f"{level}_domain": losses.domain_cross_entropy(s, t)},
                {f"{level}_domain_accuracy": losses.domain_accuracy(s, t)})

    return fn


def _teacher_consistency(ctx: TermContext):
    a = ctx.config.adaptation
    groups = ctx.gather(ctx.target_camid) if a.camera_centred else None
    values = losses.teacher_consistency(
        ctx.kmeans_key, ctx.gather(ctx.target["bn_embedding"]), ctx.gather(ctx.teacher["bn_embedding"]),
        num_clusters=teacher_clusters(ctx.config), num_iters=a.kmeans_iters, temperature=a.consistency_temperature,
        groups=groups)
    return values, {}


def teacher_clusters(config) -> int:
    """The teacher's k-means clusters per target batch: adaptation.kmeans_clusters, or with 0 the label-free
    rule batch.target_size // 4 (at least 2), the ratio of the authors' code (16 clusters on 64 stacked
    embeddings): a random batch holds few clips of any one person, so clusters are groups of lookalikes."""
    chosen = int(config.adaptation.kmeans_clusters)
    return chosen if chosen > 0 else max(2, int(config.batch.target_size) // 4)


def _memory_batch(ctx: TermContext) -> tuple[jax.Array, jax.Array]:
    """(the student's target embeddings [B', D], their pseudo-labels [B']), whole batch; also kept
    (without gradient) for the memory update after the step."""
    if ctx.extra is None or ctx.target_index is None:
        raise ValueError("the cluster-memory terms need the plus variant's state and batch['target']['index']")
    if "cluster_labels" not in ctx.keep:
        features = ctx.gather(ctx.target["bn_embedding"])
        ctx.keep["cluster_features"] = jax.lax.stop_gradient(features)
        ctx.keep["cluster_labels"] = ctx.extra["labels"][ctx.gather(ctx.target_index)]
        ctx.keep["_features_grad"] = features
    return ctx.keep["_features_grad"], ctx.keep["cluster_labels"]


def _cluster_contrast(ctx: TermContext):
    features, labels = _memory_batch(ctx)
    loss, labelled = losses.cluster_contrast(features, labels, ctx.extra["memory"], ctx.extra["valid"],
                                             ctx.config.plus.temperature)
    return {"cluster_contrast": loss}, {"pseudo_labelled": labelled}


def _cluster_soft(ctx: TermContext):
    features, _ = _memory_batch(ctx)
    p = ctx.config.plus
    # With camera-aware proxies a softmax over every proxy would reward the clip's own-camera proxy and
    # pull against the inter-camera term; summed per pseudo-identity it does not (docs/METHOD.md §1.4).
    groups = ctx.extra["slot_cluster"] if p.camera_proxies and p.soft_targets == "identity" else None
    loss = losses.memory_soft_cross_entropy(features, ctx.gather(ctx.teacher["bn_embedding"]),
                                            ctx.extra["memory"], ctx.extra["valid"], p.temperature, slot_groups=groups)
    return {"cluster_soft": loss}, {}


def _intra_camera(ctx: TermContext):
    features, labels = _memory_batch(ctx)
    loss = losses.intra_camera_contrast(features, labels, ctx.extra["memory"], ctx.extra["valid"],
                                        ctx.extra["slot_camera"], ctx.config.plus.temperature)
    return {"intra_camera": loss}, {"pseudo_labelled": jnp.mean(labels >= 0)}


def _inter_camera(ctx: TermContext):
    features, labels = _memory_batch(ctx)
    p = ctx.config.plus
    loss = losses.inter_camera_contrast(features, labels, ctx.extra["memory"], ctx.extra["valid"],
                                        ctx.extra["slot_cluster"], p.temperature, p.hard_negatives,
                                        other_cameras_only=p.inter_camera_positives == "other_cameras")
    return {"inter_camera": loss}, {"pseudo_labelled": jnp.mean(labels >= 0)}


def _camera_alignment(ctx: TermContext):
    if ctx.target_camid is None:
        raise ValueError("loss.camera_alignment needs batch['target']['camid'] (int32 [B'] camera ids)")
    value = losses.camera_alignment(ctx.gather(ctx.target["bn_embedding"]), ctx.gather(ctx.target_camid))
    return {"camera_alignment": value}, {}


# name → term. Registration order is the order terms are computed and summed in.
TERMS = Registry("loss term", None, {term.name: term for term in (
    LossTerm("ce", {"ce": "ce"}, frozenset({SOURCE}), _cross_entropy, always=True),
    LossTerm("triplet", {"triplet": "triplet"}, frozenset({SOURCE}), _triplet, always=True),
    LossTerm("infonce", {"infonce": "infonce"}, frozenset({SOURCE}), _infonce),
    LossTerm("frame_domain", {"frame_domain": "frame_domain"}, frozenset({SOURCE, TARGET}), _domain("frame")),
    LossTerm("clip_domain", {"clip_domain": "clip_domain"}, frozenset({SOURCE, TARGET}), _domain("clip")),
    LossTerm("teacher_consistency", {"consistency_ce": "consistency_ce", "consistency_dist": "consistency_dist"},
             frozenset({TARGET, TEACHER}), _teacher_consistency, ramped=True),
    # The plus variant's cluster memory (variants/plus.py); weight 0 elsewhere.
    LossTerm("cluster_contrast", {"cluster_contrast": "cluster_contrast"}, frozenset({TARGET}), _cluster_contrast),
    LossTerm("cluster_soft", {"cluster_soft": "cluster_soft"}, frozenset({TARGET, TEACHER}), _cluster_soft),
    # plus.camera_proxies: the memory's slots are (pseudo-identity, camera) proxies (CAP).
    LossTerm("intra_camera", {"intra_camera": "intra_camera"}, frozenset({TARGET}), _intra_camera),
    LossTerm("inter_camera", {"inter_camera": "inter_camera"}, frozenset({TARGET}), _inter_camera),
    LossTerm("camera_alignment", {"camera_alignment": "camera_alignment"}, frozenset({TARGET}), _camera_alignment),
)})


def check_config(config) -> None:
    """One clear line for term settings that cannot work, raised when a step is built (before training)."""
    if config.loss.infonce > 0 and config.batch.num_instances < 2:
        # Its positives are the other clips of the anchor's identity: with one clip per identity there
        # are none and the loss is 0/0, which the non-finite guard would only notice step after step.
        raise ValueError(f"config.loss.infonce={config.loss.infonce} needs config.batch.num_instances ≥ 2 "
                         f"(InfoNCE's positives are the other clips of an identity); got {config.batch.num_instances}")


def register(term: LossTerm) -> None:
    """Add `term` after the terms already in the table; a name may be registered once."""
    TERMS.register(term.name, term)


unregister = TERMS.unregister


def active(config, *, only: Sequence[str] | None = None) -> list[LossTerm]:
    """The terms this config computes, in table order; `only` restricts them to terms whose inputs are
    all in it (e.g. only=('source',): the supervised re-ID terms)."""
    allowed = set(_INPUTS if only is None else only)
    return [t for t in TERMS.values() if t.needs <= allowed and t.active(config)]


def inputs_needed(terms: Sequence[LossTerm]) -> frozenset[str]:
    return frozenset().union(*(t.needs for t in terms))


def compute(terms: Sequence[LossTerm], ctx: TermContext) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(values of every term, keyed as their `weights`; their extra metrics), in table order."""
    values, metrics = {}, {}
    for term in terms:
        v, m = term.fn(ctx)
        if set(v) != set(term.weights):
            raise ValueError(f"loss term {term.name!r} returned {sorted(v)}; its weights name {sorted(term.weights)}")
        values.update(v)
        metrics.update(m)
    return values, metrics


def weights(terms: Sequence[LossTerm], config, ramp: jax.Array | None = None) -> dict[str, jax.Array | float]:
    """Weight of every value of `terms`; ramped terms are multiplied by `ramp` when it is given."""
    out = {}
    for term in terms:
        for key, w in term.weight_values(config).items():
            out[key] = w * ramp if (ramp is not None and term.ramped) else w
    return out


def weighted_sum(values: Mapping[str, jax.Array], weights: Mapping[str, jax.Array | float]) -> jax.Array:
    """Σ weight · value in the values' order."""
    return sum(weights[name] * value for name, value in values.items())


def uses_target(config) -> bool:
    """Whether any active term reads the target clips."""
    return bool(inputs_needed(active(config)) & {TARGET, TEACHER})
