"""Shared settings of the real-data configs (configs/<target>.py): the paper's hyper-parameters.

From the authors' code (docs/METHOD.md §6.1): ResNet-50 at 256×128, clips of 4 frames, P×K = 8×4 source
clips + 32 target clips per step, Adam 3e-4 with L2 5e-4, ×0.1 at epochs 40/80/120, 150 epochs,
evaluation every 5 epochs, GRL I_max = 20000. Target-specific protocol choices are below.

Three variants, each an override table (configs/overrides.py): `paper` (default; the paper as
published, none of our label-free additions, docs/METHOD.md §1.2, §9), `reference`
(`configs/<target>.py:reference`, the authors' code; see REFERENCE and docs/REPRODUCIBILITY.md) and
`plus` (`configs/<target>.py:plus`, ours, beyond the paper; `configs/demo.py:plus` uses the same table;
see PLUS and docs/METHOD.md §1.4). Our additions are config fields here (e.g.
--config.loss.camera_alignment=1 --config.adaptation.target_bn=True); configs/demo.py has them as
modifiers. Every clustering setting comes from the label-free rules of configs/default.py.
"""
import ml_collections

from configs import default, overrides

# Every target, whatever default.py says: the paper's schedule and an ImageNet-initialised ResNet-50.
SHARED = {
    "model.depth": "50",
    "model.init_from": "imagenet",  # torchvision's ImageNet ResNet-50, fetched once from the Hugging Face hub
    "train.num_epochs": 150,
    "train.eval_every_epochs": 5,
    "train.checkpoint_every_epochs": 5,
}

# target name → its source dataset, reader options, evaluation protocol and distance.
TARGETS = {
    "mars": {"data.source.name": "svreid", "data.target.options": {"gallery": "exclude_query"},
             "data.target.protocol": "mars", "eval.distance": "cosine"},
    "ilidsvid": {"data.source.name": "svreid", "data.target.options": {"split_id": 0},
                 "data.target.protocol": "standard", "eval.distance": "cosine"},
    "prid": {"data.source.name": "svreid", "data.target.options": {"split_id": 0},
             "data.target.protocol": "standard", "eval.distance": "cosine"},
    "lsvid": {"data.source.name": "svreid", "data.target.options": {},
              "data.target.protocol": "standard", "eval.distance": "cosine"},
    # The reference ranks CCVID by a raw inner product (docs/METHOD.md §7.2) and trains on SVReID-cc.
    "ccvid": {"data.source.name": "svreid_cc", "data.target.options": {},
              "data.target.protocol": "standard", "eval.distance": "inner"},
}

# The authors' code (docs/METHOD.md §3–§6, §8): every D# flag on the code's side, the SINet backbone as
# the reference builds it, and its evaluation protocol. docs/REPRODUCIBILITY.md lists each switch.
REFERENCE = {
    "variant": "reference",
    # §3.1: SINet (IDM + SBM) on an inflated ResNet-50: biased convs, stem max-pool without padding (D12).
    "model.arch": "sinet",
    "model.stem_pool_padding": 0,
    "model.conv_bias": True,
    "model.last_stride": 1,
    "model.frame_pooling": "max",
    # §4: CE without smoothing, cosine batch-hard triplet, SINet's InfoNCE at 0.001 (D12).
    "loss.label_smoothing": 0.0,
    "loss.triplet_metric": "cosine",
    "loss.infonce": 0.001,
    # §3.6: EMA 0.99 with the 1 − 1/(t+1) ramp; the teacher sees the student's clip (D3).
    "adaptation.ema_decay": 0.99,
    "adaptation.ema_warmup": True,
    "adaptation.teacher_augment": False,
    "adaptation.grl_max_steps": 20000,
    # §5: torch Adam with L2 on every student parameter (BN and biases included), no warm-up.
    "optimizer.name": "adam_l2",
    "optimizer.decay_bn_and_bias": True,
    "optimizer.warmup_epochs": 0.0,
    "augment.erasing_sampler": "authors",  # D16: aspect uniform in [0.3, 1/0.3], corner round(u·(H − h)), 100 tries
    "model.bnneck_torch_stats": True,  # D15: BN-neck running statistics from frame, clip, frame calls, unbiased
    "data.target_sampling": "identity",  # D7: target P×K batches by target ground-truth pids
    "eval.temporal": "restricted_begin",  # D9: one 4-frame clip per tracklet
    "eval.seq_len": 4,
    "train.select_on_target_test": True,  # D10: best target-test rank-1, every 5 epochs
    "parallel.mode": "pmap",  # D12: DataParallel with per-GPU BatchNorm
    "parallel.sync_bn": False,
    "reference.detach_temporal_input": True,  # D1
    "reference.consistency_constant": True,  # D2
    "reference.teacher_reset_every_epoch": True,  # D3
    "reference.learnable_weights": True,  # D4
    "reference.accumulate_weight_grads": True,  # D4
    "reference.double_count_stage_loss": True,  # D5
    "reference.shared_grl_beta": True,  # D6
    "reference.backbone_clip_discriminator": False,  # D8
    "reference.reset_temporal_optimizer_every_epoch": True,  # D12
    "reference.infonce_sum_groups": True,  # D14
}

# The plus variant (svreid_jax/variants/plus.py), ours and beyond the paper, one recipe for the demo and
# real data: the paper's terms (source CE + triplet, both domain discriminators, the mean teacher's
# consistency), our camera term with target BN (docs/METHOD.md §4.11, §9), and from half-way on
# per-epoch pseudo-identities of the whole target set (camera-normalised DBSCAN with the label-free
# settings of configs/default.py), a memory of camera-aware proxies contrasted within and across cameras,
# and the teacher's soft assignment per pseudo-identity (docs/METHOD.md §1.4).
#
# It clusters aligned features rather than starting from scratch: run alone from an unaligned model,
# the clustering locked in camera-bound clusters no purer than a source-only model's (BENCHMARKS.md,
# "Why plus falls short").
PLUS = {
    "variant": "plus",
    # Camera-aware proxies (CAP's weights: intra 1, inter 0.5, 50 hard negatives) rather than one slot per
    # cluster: on the paper's features the plain cluster contrast brought the camera back into the
    # embedding (BENCHMARKS.md appendix, "The demo's paper with our additions"). MARS: ~600 clusters × up to 6 cameras.
    "plus.camera_proxies": True,
    "plus.max_clusters": 4096,
    "loss.intra_camera": 1.0,
    "loss.inter_camera": 0.5,
    "loss.cluster_soft": 0.5,
    # The alignment first. A live reference, so a --config.train.num_epochs override moves it along.
    "plus.start_epoch": lambda c: c.train.get_ref("num_epochs") // 2,
    "data.target_sampling": "random",
    # Our label-free additions (configs/demo.py ADDITIONS cam, tbn, pairs), on in plus everywhere.
    "loss.camera_alignment": 1.0,
    "adaptation.target_bn": True,
    "data.target_views": 2,  # two clips of a tracklet per batch: the teacher and the memory see each tracklet twice
    "adaptation.camera_centred": True,
}

VARIANTS = {"paper": {}, "reference": REFERENCE, "plus": PLUS}

# (target, variant) → what that target adds to the variant.
TARGET_VARIANTS = {
    # D11: the reference cuts every LS-VID tracklet (query and gallery too) into 48-frame pieces.
    ("lsvid", "reference"): {"data.target.options.cut_length": 48},
}


def target_config(target: str, arg: str | None) -> ml_collections.ConfigDict:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {sorted(TARGETS)}")
    variant = arg or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} for configs/{target}.py; available: {', '.join(VARIANTS)}")
    c = default.get_config()
    for table in ({"data.target.name": target}, TARGETS[target], SHARED, VARIANTS[variant],
                  TARGET_VARIANTS.get((target, variant), {})):
        c = overrides.apply(c, table)
    return c
