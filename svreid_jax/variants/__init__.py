"""Method variants as a registry: `config.variant` → how to build its train step and its extra state.

  paper      the method as the paper describes it (variants/paper.py); the same step runs our label-free
             additions when the config switches them on (camera term, adaptation.target_bn, clip pairs;
             docs/METHOD.md §9)
  reference  what the authors' PyTorch code does (variants/reference.py, docs/REPRODUCIBILITY.md)
  plus       ours, beyond the paper: the paper step with our additions, and per-epoch clustering of the
             target into a memory of camera-aware proxies with the teacher's soft assignment
             (variants/plus.py, docs/METHOD.md §1.4)

All are built from the shared pieces in variants/common.py and the loss-term table in
variants/terms.py. Adding a variant: one file with `make_train_step(model, config, axis_name)` (and,
if it keeps state beyond TrainState, `init_state(config, model, params, rng, steps_per_epoch)`), and
one entry in VARIANTS below, or `register(...)` from your own code.

A train step is `step(state, batch) -> (state, metrics)`; batch = {'source': {'video': uint8
[B,T,H,W,3], 'pid': int32 [B]}, 'target': {'video': uint8 [B',T,H,W,3], 'camid': int32 [B']}}; metrics
are scalars and include 'loss', 'grad_norm' and 'skipped' (common.guard_and_report), and 'diverged' and
'loss_median' (divergence.guarded, which make_train_step puts around every variant's step).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from svreid_jax.utils.registry import Registry
from svreid_jax.variants import common, divergence, paper, plus, reference, terms


@dataclasses.dataclass(frozen=True)
class Variant:
    """make_train_step(model, config, axis_name) -> step; axis_name is None (one device / jit) or the pmap axis.
    init_state(config, model, params, rng, steps_per_epoch) -> TrainState.variant_state (None: the variant keeps none).
    uses_target(config) -> whether the step reads the target clips (the loop then skips shipping them).
    check_config(config) -> None, or ValueError naming the field that cannot work (before any data is read).
    sized_by_target: init_state also gets num_target_train= (the number of target training tracklets).
    epoch_start(config, state, extract, camids, epoch) -> (state, stats): called by the loop before every
      epoch's first step (also when a run resumes there); extract(variables, temporal=None) -> float32
      [N_target_train, D] eval-mode features of target.train (with the evaluation's clips, or cut as `temporal`
      says: data.sampling.EVAL_TEMPORAL_METHODS), camids int [N_target_train] their cameras; stats are logged.
      It must be deterministic in (state, config, epoch) so a resumed run recomputes the same state.
    reads_target_labels(config) -> whether epoch_start also gets identities= (int [N_target_train], the target
      training split's identity labels): only a diagnostic asks, never an adaptive setting."""

    make_train_step: Callable[..., Callable]
    init_state: Callable[..., Any] | None = None
    uses_target: Callable[[Any], bool] = lambda config: True
    description: str = ""
    check_config: Callable[[Any], None] = common.check_config
    sized_by_target: bool = False
    epoch_start: Callable[..., tuple[Any, dict]] | None = None
    reads_target_labels: Callable[[Any], bool] = lambda config: False


VARIANTS = Registry("variant", "config.variant", {
    "paper": Variant(paper.make_train_step, uses_target=paper.reads_target,
                     description="the method as the paper describes it"),
    "reference": Variant(reference.make_train_step, init_state=reference.init_state,
                         description="what the authors' PyTorch code does", check_config=reference.check_config),
    "plus": Variant(plus.make_train_step, init_state=plus.init_state, sized_by_target=True,
                    epoch_start=plus.epoch_start, check_config=plus.check_config,
                    reads_target_labels=plus.reads_target_labels,
                    uses_target=paper.reads_target,
                    description="ours, beyond the paper: the paper's terms with our camera term, target BN and "
                                "clip pairs, then target pseudo-identities, camera-aware proxies, MMT"),
})
register, unregister, get = VARIANTS.register, VARIANTS.unregister, VARIANTS.get


def check_config(config) -> None:
    """Refuse settings the step of `config.variant` cannot run, with one line naming the field."""
    get(config.variant).check_config(config)


def make_train_step(model, config, axis_name: str | None = None):
    """The pure train step of `config.variant` (see the module docstring), inside the divergence guard."""
    return divergence.guarded(get(config.variant).make_train_step(model, config, axis_name=axis_name), config)


def init_state(config, model, params, rng, steps_per_epoch: int, num_target_train: int = 0) -> Any:
    """The variant's extra state (TrainState.variant_state), or None."""
    variant = get(config.variant)
    if variant.init_state is None:
        return None
    if variant.sized_by_target:
        return variant.init_state(config, model, params, rng, steps_per_epoch, num_target_train=num_target_train)
    return variant.init_state(config, model, params, rng, steps_per_epoch)


def epoch_start(config):
    """The variant's per-epoch hook (see Variant), or None."""
    return get(config.variant).epoch_start


def reads_target_labels(config) -> bool:
    """Whether the variant's epoch hook is to get the target training labels (a diagnostic's config only)."""
    return bool(get(config.variant).reads_target_labels(config))


def uses_target(config) -> bool:
    return bool(get(config.variant).uses_target(config))
