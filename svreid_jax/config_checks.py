"""Config errors up front, each one line naming the field and what was expected.

* `validate(config)`: every field that names a choice (variant, backbone, dataset, protocol, decoder,
  temporal modes, distance, optimiser, parallel mode, …) against the names the code accepts, the
  dataset options against the reader's, and the backbone's own options. main.py calls it for every
  mode and train_and_evaluate for notebooks, before any data is read or anything compiled.
* `unknown_field_message(path, config)`: for a `--config.<path>` override the config does not have,
  the closest field names.
* `resume_changes(saved, current)`: the fields in which a resumed run's config differs from the one
  its checkpoint was written with, leaving out those that cannot change what the run computes.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from svreid_jax import builders, parallel, state, variants
from svreid_jax.variants import plus as plus_variant
from svreid_jax.data import datasets, decode, sampling
from svreid_jax.evaluation import evaluators, ranking
from svreid_jax.models import backbones


class ConfigError(ValueError):
    """A config value the code cannot run with; the message names the field and the accepted values."""


# Field → the names it accepts. Callables are read when validating, so entries registered at run time
# (svreid_jax.utils.registry) count. losses.py and models/reid.py spell out their two choices in code;
# tests/test_config_checks.py checks these lists against them.
CHOICES: dict[str, Callable[[], Sequence[str]]] = {
    "variant": variants.VARIANTS.names,
    "model.arch": lambda: backbones.BACKBONES.names() + sorted(backbones.ALIASES),
    "model.dtype": lambda: ("float32", "bfloat16", "float16"),
    "model.frame_pooling": lambda: ("max", "avg"),
    "data.source.name": datasets.names,
    "data.target.name": datasets.names,
    "data.target.protocol": evaluators.PROTOCOLS.names,
    "data.decoder": lambda: decode.DECODERS,
    "data.train_temporal": lambda: sampling.TEMPORAL_METHODS,
    "data.target_sampling": lambda: ("random", "identity"),
    "data.demo_source_domain": lambda: ("source", "target"),
    "eval.temporal": lambda: sampling.EVAL_TEMPORAL_METHODS,
    "eval.distance": lambda: ranking.METRICS,
    "eval.checkpoint": lambda: builders.CHECKPOINT_CHOICES,
    "loss.triplet_metric": lambda: ("cosine", "euclidean"),
    "plus.clustering": lambda: plus_variant.CLUSTERINGS,
    "optimizer.name": lambda: state.OPTIMIZERS,
    "parallel.mode": lambda: parallel.MODES,
}

# Counts where 0 means "chosen from the devices" (evaluation.features.eval_sizing).
AUTO_COUNTS = ("eval.batch_size", "eval.num_threads")

# Fields a resumed run may change: when and what it logs, evaluates and keeps, where the files are and
# how many threads read them, the stop rules, the run's length, and the weights that only initialise a
# fresh run. Everything else (model, optimiser, schedule, data, seed, losses, …) makes it another run.
RESUME_SAFE = (
    "train.num_epochs", "train.log_every_steps", "train.eval_every_epochs", "train.checkpoint_every_epochs",
    "train.keep_checkpoints", "train.max_consecutive_nonfinite", "train.divergence_factor",
    "train.divergence_min_history", "train.max_consecutive_diverged", "train.stop_grace_sec",
    "train.allow_resume_changes", "eval.*", "data.source.root", "data.target.root", "data.source.packed",
    "data.target.packed", "data.demo_root", "data.num_threads", "data.prefetch", "data.device_prefetch",
    "data.num_workers", "data.decoder", "data.skip_bad_frames", "model.init_from", "model.init_from_allow_pickle",
    "model.remat", "parallel.mode", "parallel.multihost",
)


# Fields added to configs/default.py after checkpoints began to store their config, with the value that
# does what the code did before the field existed. A checkpoint whose stored config lacks such a field
# resumes when the current value is that one (an upgrade alone does not refuse the resume); any other
# value is a change. 'plus.*' came with the plus variant, which nothing read before, so a stored config
# without them resumes whatever they say (a switch to plus changes `variant`, which is refused).
# tests/test_config_checks.py fails when a newer field is missing here.
ADDED_FIELDS: dict[str, Any] = {
    "augment.erasing_sampler": "log_aspect",
    "model.bnneck_torch_stats": False,
    "reference.infonce_sum_groups": False,
    "loss.camera_alignment": 0.0,
    "loss.cluster_contrast": 0.0,
    "loss.cluster_soft": 0.0,
    "loss.intra_camera": 0.0,
    "loss.inter_camera": 0.0,
    "adaptation.target_bn": False,
    # Plus fields named here are held to their old behaviour, not waved through by ADDED_GROUPS: switching
    # one on changes what a resumed plus run does.
    "plus.cluster_temporal": "",
    "plus.outlier_instances": False,
    "plus.true_identities": False,
    "plus.eps_rule": "quantile",
}
ADDED_GROUPS = ("plus.*",)


def _added_at_its_old_behaviour(field: str, value: Any) -> bool:
    if field in ADDED_FIELDS:
        return value == ADDED_FIELDS[field]
    if any(fnmatch.fnmatchcase(field, pattern) for pattern in ADDED_GROUPS):
        return True
    return False


def flat_fields(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'data.source.name': 'svreid', …}: every leaf of a ConfigDict (or nested mapping) by dotted path."""
    out: dict[str, Any] = {}
    for key, value in (config.items() if hasattr(config, "items") else ()):
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            children = flat_fields(value, path + ".")
            out.update(children if children else {path: {}})
        else:
            out[path] = value
    return out


def closest_fields(path: str, config: Any, n: int = 3) -> list[str]:
    """The n field paths of `config` most like `path`, whole path or last part (difflib ratios)."""
    leaf = path.rsplit(".", 1)[-1]

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, path, candidate).ratio()
        last = difflib.SequenceMatcher(None, leaf, candidate.rsplit(".", 1)[-1]).ratio()
        return max(whole, last)

    return sorted(flat_fields(config), key=lambda c: (-score(c), c))[:n]


def unknown_field_message(path: str, config: Any) -> str:
    return (f"unknown config field {path!r} (--config.{path}); the closest fields are "
            f"{', '.join(closest_fields(path, config))}")


def has_field(config: Any, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not hasattr(node, "items") or part not in node:
            return False
        node = node[part]
    return True


def _get(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


def problems(config: Any) -> list[str]:
    """Every problem `validate` would report, one sentence each (empty when the config can run)."""
    found = []
    for field, names in CHOICES.items():
        if not has_field(config, field):
            continue
        value, accepted = _get(config, field), tuple(names())
        if value not in accepted:
            found.append(f"config.{field}={value!r}: expected one of {', '.join(map(str, accepted))}")
    for side in ("source", "target"):
        d = config.data[side]
        if d.name in datasets.names():
            unknown = sorted(set(d.options) - set(datasets.options(d.name)))
            if unknown:
                found.append(f"config.data.{side}.options: dataset {d.name!r} has no option(s) {', '.join(unknown)}; "
                             f"its options: {', '.join(datasets.options(d.name)) or 'none'}")
    for field in AUTO_COUNTS:
        if has_field(config, field):
            value = _get(config, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                found.append(f"config.{field}={value!r}: expected a whole number ≥ 0 (0 = chosen from the devices, "
                             "docs/USAGE.md \"Evaluation sizing and feature checks\")")
    if config.model.arch in CHOICES["model.arch"]():
        backbone = backbones.BACKBONES.get(backbones.ALIASES.get(config.model.arch, config.model.arch))
        try:
            backbone.check(backbone.options(config.model))
        except (ValueError, KeyError, AttributeError) as err:
            found.append(f"config.model (model.arch={config.model.arch!r}): {err}")
    return found


def validate(config: Any) -> None:
    """Raise ConfigError listing every problem of `problems(config)` in one line."""
    found = problems(config)
    if found:
        raise ConfigError("; ".join(found))


def as_json(config: Any) -> dict:
    """The config as the JSON dict stored with each checkpoint (tuples become lists)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def _safe(field: str) -> bool:
    return any(fnmatch.fnmatchcase(field, pattern) for pattern in RESUME_SAFE)


def resume_changes(saved: Mapping, current: Any) -> list[tuple[str, Any, Any]]:
    """[(field, saved value, current value)] for the fields that differ and matter (see RESUME_SAFE).

    A field only one side has counts as a change, with None on the other side, except a field added
    since (ADDED_FIELDS, ADDED_GROUPS) that the stored config lacks and the current one sets to what the
    code did before it.
    """
    old, new = flat_fields(saved), flat_fields(as_json(current))
    missing = object()
    changes = []
    for field in sorted(set(old) | set(new)):
        a, b = old.get(field, missing), new.get(field, missing)
        if a is missing and _added_at_its_old_behaviour(field, b):
            continue
        if a != b and not _safe(field):
            changes.append((field, None if a is missing else a, None if b is missing else b))
    return changes


def describe_changes(changes: Sequence[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{field} ({a!r} → {b!r})" for field, a, b in changes)
