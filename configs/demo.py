"""The embedded demo: procedural synthetic → real-looking tracklets, a tiny ResNet, sized for a CPU.

Variants (--config=configs/demo.py:<variant>), each an override table applied in the order given:
  paper        the paper as published (default): source CE + triplet, frame and sequence discriminators
               behind the GRL, the mean teacher's per-batch clustering consistency; none of our additions
  source_only  no adaptation: source losses only
  oracle       trains on the *target* training labels (an upper bound; not UDA)
  frame        source + frame-level discriminator
  frame_clip   source + both discriminators
  reference    the authors' code (configs/targets.py:REFERENCE) at demo sizes: the tiny plain ResNet
               instead of SINet (its plug-ins need ResNet-34/50/101), a small MS-TCN, fewer k-means restarts
  plus         ours, beyond the paper (configs/targets.py:PLUS): our camera term and target BN, the paper's
               terms, and from epoch 20 on per-epoch DBSCAN pseudo-identities of the target (label-free
               settings) in a memory of camera-aware proxies with the teacher's soft assignment
Our additions, each a modifier that combines with any variant but reference ("source_only,cam,tbn",
"paper,cam,pairs,tbn"):
  cam          our camera-alignment term (loss.camera_alignment=1, docs/METHOD.md §4.11)
  tbn          target BN statistics (adaptation.target_bn)
  pairs        two clips per target tracklet and camera-centred per-batch clusters for the paper's teacher
               (data.target_views=2, adaptation.camera_centred; docs/METHOD.md §9)
Plus's ingredients, each switched off, swapped or added by a modifier after plus ("plus,no_soft"):
  no_camera_normalise, no_soft, other_camera_positives, soft_per_proxy, no_contrast, no_target_bn, kmeans,
  no_camera_alignment, no_domain_alignment, no_consistency, no_paper_terms, early_start, no_camera_proxies,
  standalone, with_reliability, dense_clusters, outlier_instances, most_clusters,
  true_identities (a diagnostic that reads the target's training labels, like oracle)
Sizes and data:
  micro        (combine: "paper,micro") a few steps on tiny data, for the end-to-end test
  hard         (combine: "source_only,hard", "paper,hard", …) the hard data preset: a rendered-vs-filmed
               gap shared by all target cameras instead of per-camera scenes (svreid_jax/data/demo/scenes.py,
               shift="hard"); its data goes to <demo root>_hard
  large_test   (combine: "plus,large_test", "plus,hard,large_test") 200 target test identities instead of 50,
               about 400 queries; other data than the presets', so give it its own --config.data.demo_root

Every clustering setting (the teacher's per-batch clusters, plus's k1, k2, eps, min_samples, k-means
count) comes from the label-free rules of configs/default.py, as on real data; tests/test_configs.py
checks that no preset sets one.
"""
import ml_collections

from configs import default, overrides, targets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.data.demo = True
    c.data.source.name = "svreid"
    c.data.target.name = "mars"
    c.data.target.protocol = "mars"
    c.data.height = 64
    c.data.width = 32
    c.data.num_threads = 2

    c.model.depth = "tiny"
    c.model.width = 16
    c.model.disc_hidden = 64

    c.batch.num_identities = 8
    c.batch.num_instances = 4
    c.batch.target_size = 32

    c.optimizer.learning_rate = 1e-3
    c.optimizer.lr_milestones = (30,)
    c.optimizer.warmup_epochs = 1.0

    c.train.num_epochs = 40
    c.train.log_every_steps = 20
    c.train.eval_every_epochs = 0
    c.train.checkpoint_every_epochs = 10

    c.adaptation.grl_max_steps = 500
    c.adaptation.ema_decay = 0.99
    c.adaptation.consistency_rampup_steps = 200
    c.loss.consistency_ce = 0.1
    c.loss.consistency_dist = 0.1
    c.eval.batch_size = 64
    for name in (arg or "paper").split(","):
        c = overrides.apply(c, _table(c, name.strip()))
    return c


# Our additions, one modifier each (ADDITIONS; combined after any variant). Each camera of the demo
# paints its own scene behind everyone, and the diagnostics (BENCHMARKS.md, "Diagnostics") found that
# camera, not the source/target split, is what the target embedding carries: `cam` aligns the target
# cameras as domains. `pairs` gives the paper's teacher people to group (label-free clip pairs of one
# tracklet, camera-centred per-batch clusters). `tbn` normalises evaluation with target statistics.
ADDITIONS = {
    "cam": {"loss.camera_alignment": 1.0},
    "tbn": {"adaptation.target_bn": True},
    "pairs": {"data.target_views": 2, "adaptation.camera_centred": True},
}
_NO_DOMAIN = {"loss.frame_domain": 0.0, "loss.clip_domain": 0.0}  # both discriminators
_NO_CONSISTENCY = {"loss.consistency_ce": 0.0, "loss.consistency_dist": 0.0}  # the teacher's per-batch clusters

VARIANTS = {
    "paper": {},
    "source_only": {**_NO_DOMAIN, **_NO_CONSISTENCY},
    # Train on the target's own labelled training split: the upper bound the gap is measured against.
    "oracle": {**_NO_DOMAIN, **_NO_CONSISTENCY, "data.source.name": "mars", "data.demo_source_domain": "target"},
    "frame": {"loss.clip_domain": 0.0, **_NO_CONSISTENCY},
    "frame_clip": {**_NO_CONSISTENCY},
    "reference": {
        **targets.REFERENCE,
        # Demo sizes: SINet's plug-ins need a ResNet-34/50/101, too slow here; keep the tiny ResNet.
        "model.arch": "resnet",
        "loss.infonce": 0.0,
        "reference.features": 16,
        "reference.num_layers": 4,
        # k-means needs at least two clips per cluster of a (possibly shrunk, "micro,reference") target batch.
        "reference.consistency_clusters": lambda c: min(c.reference.consistency_clusters, c.batch.target_size // 2),
        "reference.consistency_n_init": 3,
        "reference.consistency_max_iter": 50,
        "adaptation.grl_max_steps": 500,
        "train.select_on_target_test": False,  # the demo reports its last state (no test-set selection)
    },
    # About 4 training tracklets per identity (220 for 50 ids), mostly one per camera; the clustering
    # settings come from the label-free rule (configs/default.py, variants/plus.py), as on MARS.
    "plus": {**targets.PLUS, "plus.max_clusters": 256},
}

# Plus's ingredients, each switched off (or swapped, or the paper's alignment terms added) by a modifier
# combined after plus ("plus,no_soft"). The ablation rows of BENCHMARKS.md.
PLUS_ABLATIONS = {
    "no_camera_normalise": {"plus.camera_normalise": False},  # camera-centred clustering
    "no_soft": {"loss.cluster_soft": 0.0},  # the teacher's soft assignment over the memory (MMT)
    "no_contrast": {"loss.intra_camera": 0.0, "loss.inter_camera": 0.0},  # the proxy contrasts (the soft term remains)
    "no_target_bn": {"adaptation.target_bn": False},  # target-domain BN statistics
    # The inter-camera term's positives: the person's proxies in the other cameras only, not CAP's own-camera one too.
    "other_camera_positives": {"plus.inter_camera_positives": "other_cameras"},
    "soft_per_proxy": {"plus.soft_targets": "proxy"},  # the soft term's softmax over every proxy, not per pseudo-identity
    "kmeans": {"plus.clustering": "kmeans"},  # k-means for DBSCAN on Jaccard distances
    "no_camera_alignment": {"loss.camera_alignment": 0.0},  # the paper recipe's camera term (METHOD.md §4.11)
    "no_domain_alignment": _NO_DOMAIN,
    "no_consistency": _NO_CONSISTENCY,
    # Neither the paper's discriminators nor its teacher's per-batch consistency: camera term, target BN,
    # clustering, camera-aware proxies and the soft term (whose teacher is the EMA model) remain.
    "no_paper_terms": {**_NO_DOMAIN, **_NO_CONSISTENCY},
    "early_start": {"plus.start_epoch": 5},  # clustering from epoch 5 instead of half-way
    # One slot per pseudo-identity and its plain contrast instead of camera-aware proxies (CAP).
    "no_camera_proxies": {"plus.camera_proxies": False, "loss.cluster_contrast": 1.0, "loss.intra_camera": 0.0,
                          "loss.inter_camera": 0.0},
    "with_reliability": {"plus.reliable_delta": 0.05},  # only pseudo-labels stable at eps ± 0.05 (SpCL-style)
    # Every tracklet DBSCAN leaves out as a pseudo-identity of its own (SpCL's un-clustered instances).
    "outlier_instances": {"plus.outlier_instances": True},
    # Cluster each tracklet's mean feature over all its frames, not the evaluation's 4-frame clip.
    "dense_clusters": {"plus.cluster_temporal": "dense"},
    # DBSCAN's radius where it finds the most clusters, not at the k-distances' 0.8-quantile (variants/plus.py).
    "most_clusters": {"plus.eps_rule": "most_clusters"},
    # A diagnostic, not UDA (reads target training labels, like oracle): the true identities for the
    # clustering's pseudo-identities, the ceiling of plus's clustering phase.
    "true_identities": {"plus.true_identities": True},
}
# Plus on its own: none of the paper's target terms, clustering from epoch 5, one slot per pseudo-identity.
PLUS_ABLATIONS["standalone"] = {field: value for name in ("no_camera_alignment", "no_domain_alignment", "no_consistency",
                                                          "early_start", "no_camera_proxies")
                                for field, value in PLUS_ABLATIONS[name].items()}

SIZES = {
    # A few steps on a handful of tiny tracklets: the end-to-end smoke test of tests/test_main.py.
    "micro": {
        "data.demo_options": dict(num_source_ids=8, num_source_test_ids=2, num_target_train_ids=6,
                                  num_target_test_ids=6, num_cameras=3, tracklets_per_id=(2, 3),
                                  frames_per_tracklet=(4, 8), num_distractors=1, num_junk=1, height=32, width=16),
        "data.height": 32,
        "data.width": 16,
        "model.width": 8,
        "batch.num_identities": 2,
        "batch.num_instances": 4,
        "batch.target_size": 8,
        "reference.consistency_clusters": 2,
        "plus.start_epoch": 1,  # epoch 0 with an empty memory, epoch 1 clusters
        "train.num_epochs": 2,
        "train.steps_per_epoch": 2,
        "train.log_every_steps": 1,
        "train.checkpoint_every_epochs": 1,
        "eval.batch_size": 8,
    },
}

# The hard preset: the shared filmed-look chain of shift="hard" carries the gap, so the per-camera
# scenes are kept mild (faint texture, few blobs, small cast and viewpoint differences).
HARD_DEMO_OPTIONS = dict(shift="hard", texture_strength=0.25, clutter_blobs=2, colour_cast=0.08,
                         desaturation=(0.0, 0.1), viewpoint_strength=0.3)

DATA_PRESETS = {
    # Merged into the demo options, so it combines with any training variant and size.
    "hard": {"data.demo_options": lambda c: {**c.data.demo_options.to_dict(), **HARD_DEMO_OPTIONS}},
    # 200 target test identities instead of 50 (about 400 queries, a gallery four times as large): a paired
    # 95% interval about 7 R-1 wide instead of 15-20. Its data differ, so give it a demo root of its own.
    "large_test": {"data.demo_options": lambda c: {**c.data.demo_options.to_dict(), "num_target_test_ids": 200}},
}


def _table(c: ml_collections.ConfigDict, name: str) -> overrides.Table:
    if name in ADDITIONS and c.variant == "reference":
        raise ValueError(f"demo modifier {name!r} is read by the paper and plus steps, not by reference's; "
                         "combine it with paper, source_only, frame, frame_clip or plus")
    for tables in (VARIANTS, ADDITIONS, SIZES, DATA_PRESETS):
        if name in tables:
            return tables[name]
    if name in PLUS_ABLATIONS:
        if c.variant != "plus":
            raise ValueError(f"demo variant {name!r} changes an ingredient of plus; combine it after plus, "
                             f"e.g. 'plus,{name}'")
        return PLUS_ABLATIONS[name]
    raise ValueError(f"unknown demo variant {name!r}; expected {', '.join([*VARIANTS, *ADDITIONS, *SIZES, *DATA_PRESETS])} "
                     f"or after plus one of {', '.join(PLUS_ABLATIONS)}")
