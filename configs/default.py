"""Every configuration field, with its default and what it means.

Targets override a few fields (configs/mars.py, …); `--config=configs/X.py:variant` selects a
variant through get_config(arg); single fields change on the command line: --config.loss.triplet=0.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # one seed drives parameters, sampling, augmentation and k-means
    c.variant = "paper"  # 'paper' (the method as described), 'reference' (the authors' code) or 'plus' (beyond the paper)

    c.data = ml_collections.ConfigDict()
    c.data.source = ml_collections.ConfigDict()
    c.data.source.name = "svreid"  # labelled source dataset (svreid_jax.data.datasets.load name)
    c.data.source.root = ""  # folder that holds it (see README, "Pointing a config at real data")
    c.data.source.options = ml_collections.ConfigDict()  # extra keyword arguments for the reader
    c.data.source.packed = ""  # packed array_record dir (svreid_jax.data.pack) to read instead of root
    c.data.target = ml_collections.ConfigDict()
    c.data.target.name = "mars"  # unlabelled target dataset; its query/gallery are evaluated
    c.data.target.root = ""  # folder that holds it
    c.data.target.options = ml_collections.ConfigDict()  # e.g. gallery='include_query' for MARS
    c.data.target.packed = ""  # packed array_record dir to read instead of root
    c.data.target.protocol = "standard"  # evaluation protocol (svreid_jax.evaluation.evaluators): 'standard' or 'mars'
    c.data.demo = False  # generate the procedural demo data (svreid_jax.data.demo) and use it
    c.data.demo_root = ""  # where the demo data goes; empty = <workdir>/data
    c.data.demo_options = ml_collections.ConfigDict()  # keyword arguments for demo_data.ensure (sizes, seed)
    c.data.demo_source_domain = "source"  # demo domain used as labelled source: 'source', or 'target' (oracle)
    c.data.height = 256  # frame height after resize (pixels)
    c.data.width = 128  # frame width after resize (pixels)
    c.data.seq_len = 4  # frames per training clip
    c.data.train_temporal = "restricted_random"  # temporal crop for training clips (data.sampling)
    c.data.target_sampling = "random"  # 'random' (label-free) or 'identity' (P×K by target labels, D7)
    c.data.target_views = 1  # clips per drawn target tracklet, side by side in a batch (2: label-free positive pairs)
    c.data.num_threads = 2  # grain reader threads per iterator
    c.data.prefetch = 4  # batches buffered ahead by grain
    c.data.device_prefetch = 2  # batches already transferred to device ahead of the step (0 = none)
    c.data.decoder = "auto"  # JPEG decoder: 'auto' (simplejpeg if installed, same pixels as PIL), 'pil', 'simplejpeg'
    c.data.draft_decode = False  # DCT-scaled JPEG decode when downscaling ≥2×: faster, pixels differ from PIL
    c.data.num_workers = 0  # grain worker processes (0 = threads only; >0 helps on many-core hosts)
    c.data.skip_bad_frames = False  # an undecodable frame: False stops with its path; True replaces it (nearest good frame of the clip), warns once per file and counts it (train/bad_frames)

    c.batch = ml_collections.ConfigDict()
    c.batch.num_identities = 8  # P: identities per source batch
    c.batch.num_instances = 4  # K: tracklets per identity
    c.batch.target_size = 32  # target clips per step

    c.augment = ml_collections.ConfigDict()
    c.augment.flip = True  # random horizontal flip, one decision per clip
    c.augment.erasing_probability = 0.5  # Random Erasing probability per clip (0 disables)
    c.augment.erasing_sampler = "log_aspect"  # box draws: 'log_aspect' (log-uniform aspect, 10 tries) or 'authors' (uniform aspect, rounded corner, 100 tries; D16)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "resnet"  # backbone (svreid_jax.models.backbones): 'resnet' (plain ResNet of `depth`), 'sinet', 'sbnet', 'idnet'
    c.model.depth = "50"  # ResNet depth: "18", "34", "50", "101", or "tiny" for tests and the demo
    c.model.width = 64  # base channel width (64 for the real ResNets)
    c.model.last_stride = 1  # stride of the last stage (1 keeps 16×8 maps at 256×128, re-ID custom)
    c.model.stem_pool_padding = 1  # stem max-pool padding (torchvision 1; the reference 0)
    c.model.conv_bias = False  # biases on convolutions (the reference's inflated convs have them)
    c.model.bnneck_torch_stats = False  # BN-neck running statistics as the authors' forward leaves them: frame, clip (, frame) updates, unbiased variance (D15)
    c.model.frame_pooling = "max"  # per-frame spatial pooling: 'max' (reference) or 'avg'
    c.model.disc_hidden = 256  # hidden units of the domain discriminators
    c.model.disc_dropout = 0.5  # dropout inside the discriminators
    c.model.remat = False  # recompute residual-block activations in the backward pass (memory for compute)
    c.model.dtype = "float32"  # compute dtype ('bfloat16' on accelerators); parameters stay float32
    c.model.init_from = ""  # training start: 'imagenet' (torchvision's ImageNet ResNet of model.depth from the Hugging Face hub, cached), a local torchvision ResNet file (.safetensors/.npz/.pth), or 'none' (random on purpose); empty = random for depth 'tiny', refused for 18/34/50/101. --mode=eval: an authors' student checkpoint (.pth.tar/.npz) is evaluated directly
    c.model.init_from_allow_pickle = False  # torch.load the init_from file with full unpickling (authors' files may hold numpy scalars; trusted files only)

    c.loss = ml_collections.ConfigDict()
    c.loss.ce = 1.0  # weight of the source identity cross-entropy
    c.loss.label_smoothing = 0.0  # label smoothing of that cross-entropy (reference: none)
    c.loss.triplet = 1.0  # weight of the batch-hard triplet loss on source
    c.loss.triplet_margin = 0.3  # triplet margin
    c.loss.triplet_metric = "cosine"  # triplet distance: 'cosine' (reference) or 'euclidean'
    c.loss.infonce = 0.0  # weight of SINet's temporal InfoNCE on source (reference 0.001; adds a projection)
    c.loss.infonce_temperature = 0.07  # its temperature
    c.loss.frame_domain = 1.0  # weight of the frame-level domain loss (static invariance; 0 disables)
    c.loss.clip_domain = 1.0  # weight of the sequence-level domain loss (dynamic invariance; 0 disables)
    c.loss.consistency_ce = 1.0  # weight of L^C_1, student soft assignment vs teacher clusters (0 disables)
    c.loss.consistency_dist = 1.0  # weight of L^C_2, student distance to its teacher centroid (0 disables)
    c.loss.cluster_contrast = 0.0  # plus: weight of the cluster-memory contrast of target clips with a pseudo-identity
    c.loss.camera_alignment = 0.0  # weight of the between-camera share of the target batch's embedding variance (label-free camera ids; 0 disables)
    c.loss.cluster_soft = 0.0  # plus: weight of the MMT soft cross-entropy to the teacher's assignment over the memory
    c.loss.intra_camera = 0.0  # plus with plus.camera_proxies: weight of the proxy contrast within the clip's camera (CAP)
    c.loss.inter_camera = 0.0  # plus with plus.camera_proxies: weight of the contrast of a clip's proxies in every camera against hard negatives (CAP)

    c.adaptation = ml_collections.ConfigDict()
    c.adaptation.grl_max_steps = 20000  # I_max of the GRL schedule β = 2/(1+exp(−10·step/I_max)) − 1
    c.adaptation.ema_decay = 0.999  # teacher EMA decay α
    c.adaptation.ema_warmup = True  # use min(1 − 1/(step+1), α) early on
    c.adaptation.kmeans_clusters = 0  # clusters of the teacher's target embeddings per batch; 0 = the label-free rule, batch.target_size // 4 (the authors' ratio: 16 clusters on 64 stacked embeddings)
    c.adaptation.kmeans_iters = 10  # Lloyd iterations (fixed, so the step is jit-able)
    c.adaptation.consistency_temperature = 0.1  # temperature of the student's soft assignment
    c.adaptation.consistency_rampup_steps = 0  # sigmoid ramp-up of the consistency weights (0 = none)
    c.adaptation.camera_centred = False  # ops.camera_centred on the step's target batch (label-free camids) before its k-means
    c.adaptation.teacher_augment = True  # the teacher sees its own flip/erasing of each target clip
    c.adaptation.target_bn = False  # ours (not the paper's): the student's BN running statistics (used at evaluation) come from its target forwards only; on, it forwards the target clips even when no term reads them

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam_l2"  # 'adam_l2' (torch Adam, L2 in the gradient: reference) or 'adamw'
    c.optimizer.learning_rate = 3e-4  # peak learning rate
    c.optimizer.beta1 = 0.9  # Adam β1
    c.optimizer.beta2 = 0.999  # Adam β2
    c.optimizer.eps = 1e-8  # Adam ε
    c.optimizer.weight_decay = 5e-4  # L2 / decoupled weight decay
    c.optimizer.decay_bn_and_bias = False  # also decay BN scales and biases (the reference does)
    c.optimizer.lr_milestones = (40, 80, 120)  # epochs at which the learning rate is multiplied by lr_gamma
    c.optimizer.lr_gamma = 0.1  # multiplier at each milestone
    c.optimizer.warmup_epochs = 0.0  # linear warm-up length in epochs (0 = none)
    c.optimizer.warmup_factor = 0.1  # warm-up starts at this fraction of the peak rate

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 150  # epochs over the source P×K sampler
    c.train.steps_per_epoch = -1  # -1 = as many as the source sampler gives; >0 caps it
    c.train.log_every_steps = 50  # metrics and progress (steps/s, ETA) every this many steps
    c.train.eval_every_epochs = 5  # target evaluation every this many epochs (0 = only at the end)
    c.train.checkpoint_every_epochs = 5  # checkpoint every this many epochs (and always at the end)
    c.train.max_consecutive_nonfinite = 10  # stop after this many rejected (NaN/inf) steps with no accepted update between them
    c.train.divergence_factor = 10.0  # roll back the update after which the loss or gradient norm is > this × the median of the last accepted ones (0 = off)
    c.train.divergence_window = 50  # accepted updates that median is taken over
    c.train.divergence_min_history = 1  # accepted losses remembered before the relative rule judges (NaN/inf is judged from the first step)
    c.train.max_consecutive_diverged = 10  # stop, marked diverged, after this many rejected (exploded) steps with no accepted update between them
    c.train.stop_grace_sec = 10.0  # SIGTERM/SIGINT: the step in flight may finish within this; then it is abandoned and the run saved
    c.train.allow_resume_changes = False  # resume even if the checkpoint's config differs in a field that changes the run
    c.train.keep_checkpoints = 2  # checkpoints kept on disk
    c.train.select_holdout_ids = 0  # source identities held out to pick the best checkpoint (0 = last one)
    c.train.select_on_target_test = False  # pick by target *test* rank-1 (reference D10; biased)

    c.eval = ml_collections.ConfigDict()
    c.eval.temporal = "restricted_begin"  # 'restricted_begin' (reference 4 frames), 'evenly' or 'dense'
    c.eval.seq_len = 4  # frames per evaluation clip
    # 0 = chosen from the devices (evaluation.features.eval_sizing, docs/USAGE.md "Evaluation sizing"): 32 clips and
    # data.num_threads on CPU; 512 // eval.seq_len clips per device and a thread per host core (≤ 32) on GPU/TPU.
    c.eval.batch_size = 0  # clips per evaluation batch (a multiple of the device count), 0 = auto
    c.eval.num_threads = 0  # decoding threads of evaluation, 0 = auto
    c.eval.distance = "cosine"  # 'cosine', 'euclidean' or 'inner' (reference CCVID: raw inner product)
    c.eval.flip_average = False  # also embed mirrored clips and average
    c.eval.use_teacher = False  # evaluate the EMA teacher instead of the student
    c.eval.max_rank = 50  # CMC length
    # Label-free, but a test-time step: adaptation benchmarks apply it to every variant alike and report it apart.
    c.eval.camera_normalise = False  # ops.camera_centred on the test features (camera means over query ∪ gallery) before ranking
    c.eval.rerank = False  # k-reciprocal re-ranking of the distances (Zhong et al. CVPR'17; dense N² matrices)
    c.eval.rerank_k1 = 20  # re-ranking: k of the k-reciprocal neighbourhoods
    c.eval.rerank_k2 = 6  # re-ranking: neighbours averaged by the local query expansion (1 = none)
    c.eval.rerank_lambda = 0.3  # re-ranking: weight of the original distance next to the Jaccard distance
    c.eval.protocols = True  # final and --mode=eval results add MARS include_query/all galleries, CCVID SC/CC
    c.eval.one_checkpoint_all_splits = False  # --mode=eval on iLIDS-VID/PRID: ONE checkpoint tested on split_id 0..9, transductive (the standard protocol: python -m svreid_jax.splits)
    c.eval.checkpoint = "auto"  # modes eval/visualize/extract: 'auto' (best/ if selection saved one), 'latest', 'best'
    c.eval.visualize_queries = 8  # --mode=visualize: queries drawn, each with its top-10 gallery tracklets
    c.eval.visualize_points = 400  # --mode=visualize: at most this many tracklets per domain in the PCA scatter

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = "jit"  # 'jit' (mesh + NamedSharding, global BN) or 'pmap' (per-device step; one host)
    c.parallel.sync_bn = True  # pmap only: BN statistics over the global batch; False = per device (DataParallel, D12)
    c.parallel.multihost = False  # call jax.distributed.initialize() first

    # The plus variant (variant='plus', svreid_jax.variants.plus; docs/METHOD.md "plus"). Each switch is
    # one ablation row; the loss weights are loss.cluster_contrast and loss.cluster_soft.
    c.plus = ml_collections.ConfigDict()
    c.plus.clustering = "dbscan"  # pseudo-identities of the whole target train set each epoch: 'dbscan' (on k-reciprocal Jaccard distances) or 'kmeans'
    # The clustering neighbourhood comes from a label-free rule (variants/plus.py `clustering_settings`,
    # docs/METHOD.md §1.4), the same for every dataset: 0 means "from the rule". A positive value is
    # an explicit setting that overrides it.
    c.plus.eps = 0.0  # DBSCAN radius on Jaccard distances (in (0, 1)); 0 = from plus.eps_rule (by default the plus.eps_quantile-quantile of the tracklets' nearest-neighbour Jaccard distances)
    c.plus.eps_rule = "quantile"  # how eps is found when plus.eps is 0: 'quantile' (plus.eps_quantile) or 'most_clusters' (the k-distance quantile, in 5% steps, at which DBSCAN finds the most clusters)
    c.plus.eps_quantile = 0.8  # the rule's eps: with min_samples 2 this is the share of tracklets that get a pseudo-identity (the most isolated fifth are left out)
    c.plus.min_samples = 2  # DBSCAN: neighbours within eps (itself included) that make a core point; 2 because a re-ID target guarantees only two tracklets per identity (iLIDS-VID, PRID2011)
    c.plus.k1 = 0  # Jaccard distances: k of the k-reciprocal neighbourhoods; 0 = 2 × the target's cameras (a person filmed once or twice by each camera)
    c.plus.k2 = 0  # Jaccard distances: neighbours of the local query expansion (1 = none); 0 = max(1, round(k1 / 5)), the published ratio (k1 30, k2 6)
    c.plus.reliable_delta = 0.0  # > 0: keep a DBSCAN label only if the point's cluster is stable at eps ± delta (SpCL-style reliability; 0 = off)
    c.plus.reliable_min_iou = 0.5  # the intersection over union a stable point's cluster keeps with its cluster at eps ± reliable_delta
    c.plus.kmeans_clusters = 0  # k-means clusters (plus.clustering='kmeans'); 0 = as many as DBSCAN finds on the same features
    c.plus.kmeans_iters = 30  # k-means Lloyd iterations
    c.plus.max_clusters = 2048  # memory capacity M (slots); more clusters than this: the largest are kept
    c.plus.start_epoch = 0  # first epoch (0-based) that clusters; before it the memory is empty and its losses 0
    c.plus.memory_momentum = 0.2  # μ of the memory update m_y ← normalise(μ m_y + (1 − μ) f)
    c.plus.temperature = 0.05  # τ of the softmax over the memory
    c.plus.camera_normalise = True  # ops.camera_centred on the target training set's features before the epoch's clustering
    c.plus.camera_proxies = False  # memory slots per (pseudo-identity, camera) instead of per pseudo-identity (CAP); read by loss.intra_camera / inter_camera
    c.plus.inter_camera_positives = "all"  # inter_camera's positives: 'all' proxies of the clip's pseudo-identity (CAP) or 'other_cameras' (its own-camera proxy counts nowhere, so a one-camera pseudo-identity cannot pull its clips towards that camera)
    c.plus.hard_negatives = 50  # inter_camera: the most similar proxies of other pseudo-identities each clip is contrasted with
    c.plus.cluster_temporal = ""  # clips of the target tracklets plus clusters: '' = the evaluation's (eval.temporal), or 'restricted_begin', 'evenly', 'dense' (every frame, in chunks of eval.seq_len, averaged)
    c.plus.outlier_instances = False  # each tracklet DBSCAN leaves out becomes a pseudo-identity of its own (SpCL's un-clustered instances) instead of counting in no memory term
    c.plus.true_identities = False  # a diagnostic, not adaptation (reads the target's training labels, like oracle): the true identities replace the pseudo-identities, the ceiling of plus's clustering phase; off in every preset
    c.plus.soft_targets = "identity"  # loss.cluster_soft with camera proxies: 'identity' (teacher and student probabilities summed over each pseudo-identity's proxies) or 'proxy' (a softmax over every proxy, which rewards the clip's own-camera proxy)

    # The reference variant (variant='reference', svreid_jax.variants.reference; docs/REPRODUCIBILITY.md).
    # The D# flags default to the paper's side here; configs/<target>.py:reference sets the code's side.
    c.reference = ml_collections.ConfigDict()
    c.reference.num_stages = 4  # MS-TCN stages on the detached frame features
    c.reference.num_layers = 10  # dilated residual layers per stage (dilations 1 … 512)
    c.reference.features = 64  # feature maps per stage; also the hidden units of its two discriminators
    c.reference.dropout = 0.5  # dropout in the residual layers and the two discriminators
    c.reference.adv_stages = (1, 2)  # 0-based stages whose adversarial and entropy losses count (place_adv N Y Y N)
    c.reference.tmse_weight = 0.15  # α of the truncated MSE smoothing term, every stage, source only
    c.reference.tmse_tau = 4.0  # τ: (log-prob difference)² is clamped at τ²
    c.reference.entropy_weight = 0.01  # μ of the attentive entropy, adversarial stages, source + target
    c.reference.consistency_clusters = 16  # k-means clusters on the 2B stacked student/teacher target embeddings
    c.reference.consistency_n_init = 10  # k-means restarts (k-means++ seeding, best inertia kept)
    c.reference.consistency_max_iter = 300  # k-means Lloyd iterations at most per restart
    c.reference.consistency_mismatch_weight = 10.0  # L_cons = this · L_01 + L_dist
    c.reference.temporal_lr = 3e-4  # Adam learning rate of the MS-TCN + discriminators (no weight decay)
    c.reference.weight_init = (0.0, -1.55, -0.45)  # initial a = (a_reid, a_stage, a_cons); L = Σ e^{a_i} L_i
    c.reference.weight_lr = 3e-4  # Adam learning rate of a
    c.reference.weight_decay = 5e-4  # L2 (in the gradient) on a
    c.reference.detach_temporal_input = False  # D1: the MS-TCN reads stop_gradient(frame features); no backbone gradient
    c.reference.consistency_constant = False  # D2: L_cons from k-means, a constant (no gradient); False = differentiable L^C_1 + L^C_2
    c.reference.teacher_reset_every_epoch = False  # D3: the EMA step counter restarts each epoch (teacher = student then)
    c.reference.learnable_weights = False  # D4: train a by gradient; False = fixed weights e^{weight_init}
    c.reference.accumulate_weight_grads = False  # D4: Adam on a sees the running sum of all past gradients (never zeroed)
    c.reference.double_count_stage_loss = False  # D5: the temporal module gets (1 + e^{a1})·∇L_st (L_st back-propagated twice)
    c.reference.shared_grl_beta = False  # D6: the sequence discriminator uses the frame β; False = β/10 (β_video)
    c.reference.backbone_clip_discriminator = True  # D8: a domain discriminator on the backbone clip embeddings (dead in the code)
    c.reference.reset_temporal_optimizer_every_epoch = False  # D12: re-create the temporal Adam each epoch
    c.reference.infonce_sum_groups = False  # D14: InfoNCE = Σ over the G identity groups / one group's pairs (G × the mean), as the authors' code
    return c
