"""Shared settings of the real-data configs (configs/<target>.py): the paper's hyper-parameters.

From the authors' code (method-spec §5): ResNet-50 at 256×128, clips of 4 frames, P×K = 8×4 source
clips + 32 target clips per step, Adam 3e-4 with L2 5e-4, ×0.1 at epochs 40/80/120, 150 epochs,
evaluation every 5 epochs, GRL I_max = 20000. Target-specific protocol choices are below.
"""
import ml_collections

from configs import default

# target name → (source dataset, target reader options, evaluation distance)
_TARGETS = {
    "mars": ("svreid", {"gallery": "exclude_query"}, "cosine"),
    "ilidsvid": ("svreid", {"split_id": 0}, "cosine"),
    "prid": ("svreid", {"split_id": 0}, "cosine"),
    "lsvid": ("svreid", {}, "cosine"),
    # The reference ranks CCVID by a raw inner product (method-spec §8.2) and trains on SVReID-cc.
    "ccvid": ("svreid_cc", {}, "inner"),
}


def target_config(target: str, arg: str | None) -> ml_collections.ConfigDict:
    if target not in _TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {sorted(_TARGETS)}")
    source, options, distance = _TARGETS[target]
    c = default.get_config()
    c.data.source.name = source
    c.data.target.name = target
    c.data.target.options = ml_collections.ConfigDict(options)
    c.eval.distance = distance
    c.model.depth = "50"
    c.train.num_epochs = 150
    c.train.eval_every_epochs = 5
    c.train.checkpoint_every_epochs = 5
    variant = arg or "paper"
    if variant != "paper":
        raise ValueError(f"unknown variant {variant!r} for configs/{target}.py; available: paper")
    return c
