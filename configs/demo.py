"""The embedded demo: procedural synthetic → real-looking tracklets, a tiny ResNet, sized for a CPU.

Variants (--config=configs/demo.py:<variant>):
  paper        the method (default): source CE + triplet, frame and sequence discriminators, mean teacher,
               and the target's cameras aligned as domains (loss.camera_alignment)
  source_only  no adaptation: source losses only
  oracle       trains on the *target* training labels (an upper bound; not UDA)
  frame        source + frame-level discriminator
  frame_clip   source + both discriminators
  reference    the authors' code (configs/targets.py:REFERENCE) at demo sizes: the tiny plain ResNet
               instead of SINet (its plug-ins need ResNet-34/50/101), a small MS-TCN, fewer k-means restarts
  plus         beyond the paper (configs/targets.py:PLUS): the paper recipe, and from epoch 20 on per-epoch
               DBSCAN pseudo-identities of the target, a memory of camera-aware proxies, the teacher's soft
               assignment, target BN; sized for the demo here
  no_camera_normalise, no_soft, no_contrast, no_target_bn, kmeans, no_camera_alignment, no_domain_alignment,
  no_consistency, early_start, no_camera_proxies, standalone, with_reliability
               (combine after plus: "plus,no_soft") one ingredient of plus off, swapped or added; standalone
               is plus without the paper's target terms, clustering from epoch 5: the ablation rows
  micro        (combine: "paper,micro") a few steps on tiny data, for the end-to-end test
  hard         (combine: "source_only,hard", "paper,hard", …) the hard data preset: a rendered-vs-filmed
               gap shared by all target cameras instead of per-camera scenes (svreid_jax/data/demo/scenes.py,
               shift="hard"); its data goes to <demo root>_hard

Each name is an override table (configs/overrides.py), applied in the order given: VARIANTS train
differently, PLUS_ABLATIONS change one ingredient of plus, SIZES shrink the run, DATA_PRESETS change
the generated data.
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
    c.adaptation.kmeans_clusters = 16
    c.adaptation.consistency_rampup_steps = 200
    c.loss.consistency_ce = 0.1
    c.loss.consistency_dist = 0.1
    # The teacher's clusters on plain random target batches formed around cameras (each demo camera
    # paints its own scene behind everyone) and the consistency terms then hurt; label-free pairs of
    # clips from one tracklet and camera-centred embeddings give it people to group instead
    # (BENCHMARKS.md, "Demo ablation").
    c.data.target_views = 2
    c.adaptation.camera_centred = True
    # Each demo camera paints its own scene behind everyone, and the diagnostics (BENCHMARKS.md,
    # "Diagnostics") found that camera, not the source/target split, is what the target embedding
    # carries: treat each target camera as a domain to align, with the between-camera share of the
    # target batch's variance as a loss (label-free camera ids; docs/METHOD.md §4.5).
    c.loss.camera_alignment = 1.0
    c.eval.batch_size = 64
    for name in (arg or "paper").split(","):
        c = overrides.apply(c, _table(c, name.strip()))
    return c


# The label-free clip pairs, camera-centred clusters and camera term set above serve the paper
# variant's teacher (and plus, which keeps the paper's recipe); the other variants run without them.
_PAPER_EXTRAS_OFF = {"data.target_views": 1, "adaptation.camera_centred": False, "loss.camera_alignment": 0.0}
_NO_DOMAIN = {"loss.frame_domain": 0.0, "loss.clip_domain": 0.0}  # both discriminators
_NO_CONSISTENCY = {"loss.consistency_ce": 0.0, "loss.consistency_dist": 0.0}  # the teacher's per-batch clusters

VARIANTS = {
    "paper": {},
    "source_only": {**_PAPER_EXTRAS_OFF, **_NO_DOMAIN, **_NO_CONSISTENCY},
    # Train on the target's own labelled training split: the upper bound the gap is measured against.
    "oracle": {**_PAPER_EXTRAS_OFF, **_NO_DOMAIN, **_NO_CONSISTENCY,
               "data.source.name": "mars", "data.demo_source_domain": "target"},
    "frame": {**_PAPER_EXTRAS_OFF, "loss.clip_domain": 0.0, **_NO_CONSISTENCY},
    "frame_clip": {**_PAPER_EXTRAS_OFF, **_NO_CONSISTENCY},
    "reference": {
        **_PAPER_EXTRAS_OFF, **targets.REFERENCE,
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
    "plus": {
        **targets.PLUS,
        # About 4 training tracklets per identity (220 for 50 ids), mostly one per camera: much smaller
        # neighbourhoods than MARS's, so smaller k-reciprocal neighbourhoods, radius and clusters; chosen
        # by the purity of the pseudo-labels (docs/METHOD.md §1.4), which MARS's settings merged.
        "plus.k1": 6,
        "plus.k2": 2,
        "plus.eps": 0.45,
        "plus.min_samples": 2,
        "plus.max_clusters": 256,
        "plus.kmeans_clusters": 50,
    },
}

# Plus's ingredients, each switched off (or swapped, or the paper's alignment terms added) by a modifier
# combined after plus ("plus,no_soft"). The ablation rows of BENCHMARKS.md.
PLUS_ABLATIONS = {
    "no_camera_normalise": {"plus.camera_normalise": False},  # camera-centred clustering
    "no_soft": {"loss.cluster_soft": 0.0},  # the teacher's soft assignment over the memory (MMT)
    "no_contrast": {"loss.intra_camera": 0.0, "loss.inter_camera": 0.0},  # the proxy contrasts (the soft term remains)
    "no_target_bn": {"plus.target_bn": False},  # target-domain BN statistics
    "kmeans": {"plus.clustering": "kmeans"},  # k-means for DBSCAN on Jaccard distances
    "no_camera_alignment": {"loss.camera_alignment": 0.0},  # the paper recipe's camera term (METHOD.md §4.11)
    "no_domain_alignment": _NO_DOMAIN,
    "no_consistency": _NO_CONSISTENCY,
    "early_start": {"plus.start_epoch": 5},  # clustering from epoch 5 instead of half-way
    # One slot per pseudo-identity and its plain contrast instead of camera-aware proxies (CAP).
    "no_camera_proxies": {"plus.camera_proxies": False, "loss.cluster_contrast": 1.0, "loss.intra_camera": 0.0,
                          "loss.inter_camera": 0.0},
    "with_reliability": {"plus.reliable_delta": 0.05},  # only pseudo-labels stable at eps ± 0.05 (SpCL-style)
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
        "adaptation.kmeans_clusters": 2,
        "reference.consistency_clusters": 2,
        "plus.start_epoch": 1,  # epoch 0 with an empty memory, epoch 1 clusters
        "plus.min_samples": 2,
        "plus.kmeans_clusters": 4,
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
}


def _table(c: ml_collections.ConfigDict, name: str) -> overrides.Table:
    for tables in (VARIANTS, SIZES, DATA_PRESETS):
        if name in tables:
            return tables[name]
    if name in PLUS_ABLATIONS:
        if c.variant != "plus":
            raise ValueError(f"demo variant {name!r} changes an ingredient of plus; combine it after plus, "
                             f"e.g. 'plus,{name}'")
        return PLUS_ABLATIONS[name]
    raise ValueError(f"unknown demo variant {name!r}; expected {', '.join([*VARIANTS, *SIZES, *DATA_PRESETS])} "
                     f"or after plus one of {', '.join(PLUS_ABLATIONS)}")
