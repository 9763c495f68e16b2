"""Shared settings of the real-data configs (configs/<target>.py): the paper's hyper-parameters.

From the authors' code (docs/METHOD.md §6.1): ResNet-50 at 256×128, clips of 4 frames, P×K = 8×4 source
clips + 32 target clips per step, Adam 3e-4 with L2 5e-4, ×0.1 at epochs 40/80/120, 150 epochs,
evaluation every 5 epochs, GRL I_max = 20000. Target-specific protocol choices are below.

Variants: `paper` (default), `reference` (`configs/<target>.py:reference`, the authors' code; see
apply_reference and docs/REPRODUCIBILITY.md) and `plus` (`configs/<target>.py:plus`, beyond the paper;
see apply_plus and docs/METHOD.md "plus").
"""
import ml_collections

from configs import default

# target name → (source dataset, target reader options, evaluation distance, evaluation protocol)
_TARGETS = {
    "mars": ("svreid", {"gallery": "exclude_query"}, "cosine", "mars"),
    "ilidsvid": ("svreid", {"split_id": 0}, "cosine", "standard"),
    "prid": ("svreid", {"split_id": 0}, "cosine", "standard"),
    "lsvid": ("svreid", {}, "cosine", "standard"),
    # The reference ranks CCVID by a raw inner product (docs/METHOD.md §7.2) and trains on SVReID-cc.
    "ccvid": ("svreid_cc", {}, "inner", "standard"),
}


def target_config(target: str, arg: str | None) -> ml_collections.ConfigDict:
    if target not in _TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {sorted(_TARGETS)}")
    source, options, distance, protocol = _TARGETS[target]
    c = default.get_config()
    c.data.source.name = source
    c.data.target.name = target
    c.data.target.options = ml_collections.ConfigDict(options)
    c.data.target.protocol = protocol
    c.eval.distance = distance
    c.model.depth = "50"
    c.model.init_from = "imagenet"  # torchvision's ImageNet ResNet-50, fetched once from the Hugging Face hub
    c.train.num_epochs = 150
    c.train.eval_every_epochs = 5
    c.train.checkpoint_every_epochs = 5
    variant = arg or "paper"
    if variant == "reference":
        c = apply_reference(c)
        if target == "lsvid":
            # D11: the reference cuts every LS-VID tracklet (query and gallery too) into 48-frame pieces.
            c.data.target.options.cut_length = 48
        return c
    if variant == "plus":
        return apply_plus(c)
    if variant != "paper":
        raise ValueError(f"unknown variant {variant!r} for configs/{target}.py; available: paper, reference, plus")
    return c


def apply_reference(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The authors' code (docs/METHOD.md §3–§6, §8): every D# flag on the code's side, the SINet backbone as
    the reference builds it, and its evaluation protocol. docs/REPRODUCIBILITY.md lists each switch."""
    c.variant = "reference"
    # §3.1: SINet (IDM + SBM) on an inflated ResNet-50: biased convs, stem max-pool without padding (D12).
    c.model.arch = "sinet"
    c.model.stem_pool_padding = 0
    c.model.conv_bias = True
    c.model.last_stride = 1
    c.model.frame_pooling = "max"
    # §4: CE without smoothing, cosine batch-hard triplet, SINet's InfoNCE at 0.001 (D12).
    c.loss.label_smoothing = 0.0
    c.loss.triplet_metric = "cosine"
    c.loss.infonce = 0.001
    # §3.6: EMA 0.99 with the 1 − 1/(t+1) ramp; the teacher sees the student's clip (D3).
    c.adaptation.ema_decay = 0.99
    c.adaptation.ema_warmup = True
    c.adaptation.teacher_augment = False
    c.adaptation.grl_max_steps = 20000
    # §5: torch Adam with L2 on every student parameter (BN and biases included), no warm-up.
    c.optimizer.name = "adam_l2"
    c.optimizer.decay_bn_and_bias = True
    c.optimizer.warmup_epochs = 0.0
    c.augment.erasing_sampler = "authors"  # D16: aspect uniform in [0.3, 1/0.3], corner round(u·(H − h)), 100 tries
    c.model.bnneck_torch_stats = True  # D15: BN-neck running statistics from frame, clip, frame calls, unbiased
    c.data.target_sampling = "identity"  # D7: target P×K batches by target ground-truth pids
    c.eval.temporal = "restricted_begin"  # D9: one 4-frame clip per tracklet
    c.eval.seq_len = 4
    c.train.select_on_target_test = True  # D10: best target-test rank-1, every 5 epochs
    c.parallel.mode = "pmap"  # D12: DataParallel with per-GPU BatchNorm
    c.parallel.sync_bn = False
    r = c.reference
    r.detach_temporal_input = True  # D1
    r.consistency_constant = True  # D2
    r.teacher_reset_every_epoch = True  # D3
    r.learnable_weights = True  # D4
    r.accumulate_weight_grads = True  # D4
    r.double_count_stage_loss = True  # D5
    r.shared_grl_beta = True  # D6
    r.backbone_clip_discriminator = False  # D8
    r.reset_temporal_optimizer_every_epoch = True  # D12
    r.infonce_sum_groups = True  # D14
    return c


def apply_plus(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The plus variant (svreid_jax/variants/plus.py): the paper's recipe as this config has it (source
    CE + triplet, both domain discriminators, the mean teacher's consistency terms, any camera term), and
    from half-way on per-epoch pseudo-identities of the whole target set (camera-normalised clustering),
    a memory of camera-aware proxies contrasted within and across cameras, the teacher's soft
    assignment over the memory and target BN statistics (docs/METHOD.md "plus").

    It clusters the paper's features rather than replacing the paper: run alone from an unaligned model,
    the clustering locked in camera-bound clusters no purer than a source-only model's (BENCHMARKS.md,
    "Why plus falls short"), while the paper's aligned features cluster purer and carry no camera."""
    c.variant = "plus"
    # Camera-aware proxies (CAP's weights: intra 1, inter 0.5, 50 hard negatives) rather than one slot per
    # cluster: on the paper's features the plain cluster contrast brought the camera back into the
    # embedding (BENCHMARKS.md, "plus on the paper recipe"). MARS: ~600 clusters × up to 6 cameras.
    c.plus.camera_proxies = True
    c.plus.max_clusters = 4096
    c.loss.intra_camera = 1.0
    c.loss.inter_camera = 0.5
    c.loss.cluster_soft = 0.5
    # The paper's alignment first. A reference: a --config.train.num_epochs override moves it along.
    c.plus.start_epoch = c.train.get_ref("num_epochs") // 2
    c.data.target_sampling = "random"
    c.data.target_views = 2  # two clips of a tracklet per batch: the memory sees each pseudo-identity twice
    return c
