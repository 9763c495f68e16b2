"""The composed video re-ID model: per-frame ResNet → spatial pooling → temporal average → BN-neck →
identity classifier, plus frame- and sequence-level domain discriminators behind the GRL.

This is the `paper` variant's placement (docs/METHOD.md §3): the discriminators sit on the backbone's
own per-frame and clip embeddings, so the reversed adversarial gradient reaches the deployed network
(unlike the authors' code, docs/METHOD.md §8 D1, where they sit on a detached MS-TCN branch).

Backbones (`arch`, the registry in svreid_jax.models.backbones): 'resnet' is the plain per-frame
ResNet of `backbone['depth']`; 'sinet', 'sbnet', 'idnet' add the SINet plug-ins (IDM/SBM,
svreid_jax.models.sinet) that mix the T frames of each clip, so the clip length T of the input is
part of the model: SBM needs T = 4 (or 8), IDM keeps the T·h·w it was initialised with.

Parameter tree ('params'; BN statistics mirror it in 'batch_stats'):
  backbone/...              ResNet with torchvision names (svreid_jax.models.resnet); with a SINet
                            arch also layer2_{1,3}_idm/..., layer3_{1,3,5}_sbm/...
  bnneck/{scale,bias}       BatchNorm on the clip embedding
  classifier/{kernel,bias}  Dense(num_classes)
  projection/{kernel,bias}  Dense(D) for the temporal InfoNCE (only with infonce_projection=True)
  frame_discriminator/{fc1,fc2}, clip_discriminator/{fc1,fc2}
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from svreid_jax import ops
from svreid_jax.models import backbones
from svreid_jax.models import resnet as resnet_lib
from svreid_jax.models.discriminators import DomainDiscriminator
from svreid_jax.models.temporal import temporal_average

Dtype = Any

OUTPUT_KEYS = ("frame_embeddings", "clip_embedding", "bn_embedding", "logits", "frame_domain_logits",
               "clip_domain_logits")
# Added to the outputs when ReIDNet.infonce_projection is set.
PROJECTION_KEY = "projection"

# The reference's projection: Conv1d(D→D, k=1) with kaiming_normal_(mode='fan_out'), bias 0.
_projection_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _as_dict(options: Any) -> dict[str, Any]:
    """dict / FrozenDict / ml_collections.ConfigDict → plain dict."""
    if hasattr(options, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(options.to_dict())
    if isinstance(options, Mapping):
        return dict(options)
    raise TypeError(f"ReIDNet.backbone must be a mapping of backbone options, got {type(options).__name__}")


def embedding_dim(backbone: Any, arch: str = "resnet") -> int:
    """Embedding size D of a ReIDNet with these backbone options (2048 for ResNet-50)."""
    spec = backbones.get(arch)
    return spec.feature_dim(spec.check(_as_dict(backbone)))


def rms_normalise(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / RMS(x) over the last axis (= √D · x / ‖x‖): parameter-free, per vector, float32."""
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _bnneck_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BNNeck(nn.BatchNorm):
    """The BN-neck: BatchNorm on the clip embeddings [B, D], whose running statistics can follow the
    authors' PyTorch forward instead of Flax's single update (docs/METHOD.md §3.3).

    torch_stats=False: one update per train-mode call, from the clip batch, biased variance (Flax).
    torch_stats=True: the authors' forward calls its BN-neck on the frames (`mid`), on the clips, and
    with InfoNCE on the frames again (`frame_calls=2`); each call moves the running statistics by
    PyTorch's rule, r ← 0.9·r + 0.1·s with the *unbiased* batch variance n/(n − 1)·σ². The clips are
    normalised the same way in both modes (biased batch variance, as PyTorch normalises).
    """

    torch_stats: bool = False

    def __call__(self, x, use_running_average: Optional[bool] = None, *, frames: Optional[jax.Array] = None,
                 frame_calls: int = 1):
        """x: clip embeddings [B, D]; frames: the frame embeddings [B, T, D] they average (torch_stats only)."""
        running = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        track = (self.torch_stats and not running and not self.is_initializing()
                 and self.has_variable("batch_stats", "mean"))
        if track:
            old_mean = self.get_variable("batch_stats", "mean")
            old_var = self.get_variable("batch_stats", "var")
        y = super().__call__(x, use_running_average)
        if track:
            if frames is None or frame_calls not in (1, 2):
                raise ValueError("BNNeck(torch_stats=True) needs the frames and frame_calls 1 or 2")
            mean, var = old_mean, old_var
            # Call order of the authors' forward: mid = bn(frames), f = bn(clips), [bn(frames) for InfoNCE].
            for batch in (frames, x, frames)[:1 + frame_calls]:
                mu, sigma2 = ops.batch_moments(batch, self.axis_name, flatten=True)
                n = math.prod(batch.shape[:-1])  # rows per device; the unbiased correction needs all of them
                if self.axis_name is not None:
                    n *= jax.lax.axis_size(self.axis_name)
                mean = self.momentum * mean + (1 - self.momentum) * mu
                var = self.momentum * var + (1 - self.momentum) * sigma2 * (n / max(n - 1, 1))
            self.put_variable("batch_stats", "mean", mean)
            self.put_variable("batch_stats", "var", var)
        return y


class ReIDNet(nn.Module):
    """Video re-ID network with domain discriminators.

    Attributes:
      num_classes: source identities (classifier outputs).
      backbone: the backbone's options (models.backbones); for the ResNet family the `resnet(...)`
        arguments: `depth` (18/34/50/101/'tiny') and optionally `width`,
        `last_stride`, `stem_pool_padding`, `conv_bias`, `remat`. A dict or ml_collections.ConfigDict.
      frame_pooling: per-frame spatial pooling over H×W: 'max' (reference) or 'avg'.
      disc_hidden: hidden units of both domain discriminators.
      disc_dropout: dropout rate inside the discriminators.
      dtype: backbone compute dtype (e.g. jnp.bfloat16). Pooled embeddings and everything after
        them (BN-neck, classifier, discriminators) are computed in float32; params are float32.
      arch: a name of models.backbones.BACKBONES: 'resnet' (default: the plain ResNet of `backbone['depth']`), or a
        SINet backbone 'sinet' (IDM + SBM, the reference's default), 'sbnet' (SBM only), 'idnet'
        (IDM only). The SINet archs need depth 50 (34 and 101 also have the plug-in positions) and
        take T from the input; with SBM, T must be 4 or 8.
      infonce_projection: add the reference's InfoNCE projection head: a Dense(D) (≡ Conv1d k=1,
        Kaiming-normal fan_out, bias 0) on the per-frame BN-neck features, returned as
        `projection` [B, T, D]. The key is absent when this is False.
      bn_axis_name: pmap/shard_map axis over which every BatchNorm (backbone, plug-ins, BN-neck and
        the projection's frame normalisation) averages its batch statistics: sync BN across
        devices. None (default) on one device or under jit, whose statistics are already global;
        the parallel step builders set it (parallel.parallel_model), init never needs it.
      bnneck_torch_stats: the BN-neck's running statistics as the authors' training forward leaves
        them (BNNeck: frame, clip and, with the projection, frame updates; unbiased variance). Only
        the running statistics change, so train-mode outputs are the same either way.

    Projection input: the frame features normalised with the BN-neck's scale and bias, and with the
    *frames'* batch statistics in train mode (the running statistics in eval mode), as the
    reference's `bn(x)` on (B, D, T). Unless `bnneck_torch_stats`, this does not update the BN-neck's
    running statistics (the reference updates them from frames too, docs/METHOD.md §3.3), so turning
    the projection on leaves the BN-neck and the embeddings exactly as without it.

    Discriminator input: the discriminators see `rms_normalise(embedding)`, i.e. each frame/clip
    vector divided by its own RMS. Raw max-pooled ReLU features have a large, drifting scale
    (hundreds for an ImageNet ResNet-50), which with a fixed-init MLP gives saturated logits and
    an adversarial gradient whose size follows the feature norm rather than β. We chose a
    per-vector, parameter-free normalisation over the BN-neck statistics because: (1) the
    reversed gradient then only acts on the *direction* of the embedding, which is what the cosine
    retrieval metric and triplet loss use; (2) it does not depend on batch composition — source and
    target run as separate train-mode forwards, so batch statistics would normalise each domain
    with its own mean and hide exactly the mean shift that remains at test time (running stats);
    (3) it adds no extra BN-neck updates (the reference's triple BN call mixes frame and clip
    statistics, docs/METHOD.md §3.3).
    """

    num_classes: int
    backbone: Any
    frame_pooling: str = "max"
    disc_hidden: int = 256
    disc_dropout: float = 0.5
    dtype: Dtype = jnp.float32
    arch: str = "resnet"
    infonce_projection: bool = False
    bn_axis_name: Optional[str] = None
    bnneck_torch_stats: bool = False

    def __post_init__(self):
        # The backbone options are stored checked and as a FrozenDict so the module stays hashable
        # (Linen hashes modules in nn.jit/nn.remat and when they are static arguments).
        arch = backbones.canonical_name(self.arch)
        object.__setattr__(self, "arch", arch)
        options = backbones.get(arch).check(_as_dict(self.backbone))
        object.__setattr__(self, "backbone", flax.core.FrozenDict(options))
        super().__post_init__()

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool, grl_beta: Any = 0.0) -> dict[str, jax.Array]:
        """video: [B, T, H, W, 3] float32, normalised → dict with

        frame_embeddings [B, T, D], clip_embedding [B, D], bn_embedding [B, D],
        logits [B, num_classes], frame_domain_logits [B, T, 2], clip_domain_logits [B, 2]
        (+ projection [B, T, D] with `infonce_projection`) (all float32). `grl_beta` scales the
        reversed gradient of both discriminators; it may be a traced scalar. `train` selects batch
        statistics (and updates 'batch_stats' when mutable) and enables dropout (rng 'dropout').
        """
        if video.ndim != 5:
            raise ValueError(f"ReIDNet expects video [B, T, H, W, C], got shape {video.shape}")
        if self.frame_pooling not in ("max", "avg"):
            raise ValueError(f"ReIDNet.frame_pooling must be 'max' or 'avg', got {self.frame_pooling!r}")
        b, t = video.shape[:2]
        net = backbones.get(self.arch).build(dict(self.backbone), clip_len=t, dtype=self.dtype,
                                             bn_axis_name=self.bn_axis_name, name="backbone")

        fmap = net(video.reshape((b * t,) + video.shape[2:]), train=train)  # [B·T, h, w, D]
        fmap = fmap.astype(jnp.float32)
        pooled = jnp.max(fmap, axis=(1, 2)) if self.frame_pooling == "max" else jnp.mean(fmap, axis=(1, 2))
        frame_embeddings = pooled.reshape(b, t, -1)  # [B, T, D]
        clip_embedding = temporal_average(frame_embeddings)  # [B, D]

        bnneck = BNNeck(
            torch_stats=self.bnneck_torch_stats,
            use_running_average=not train,
            momentum=resnet_lib.BN_MOMENTUM,
            epsilon=resnet_lib.BN_EPSILON,
            scale_init=_bnneck_scale_init,
            bias_init=nn.initializers.zeros,
            param_dtype=jnp.float32,
            # Two-pass batch variance, as PyTorch: E[x²] − E[x]² cancels badly in float32 for
            # max-pooled features whose mean is large next to their spread across a small batch.
            use_fast_variance=False,
            axis_name=self.bn_axis_name,
            name="bnneck",
        )
        bn_embedding = bnneck(clip_embedding, frames=frame_embeddings, frame_calls=2 if self.infonce_projection else 1)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.001),
            bias_init=nn.initializers.zeros,
            param_dtype=jnp.float32,
            name="classifier",
        )(bn_embedding)

        frame_disc = DomainDiscriminator(self.disc_hidden, 2, self.disc_dropout, name="frame_discriminator")
        clip_disc = DomainDiscriminator(self.disc_hidden, 2, self.disc_dropout, name="clip_discriminator")
        frame_domain_logits = frame_disc(rms_normalise(frame_embeddings), beta=grl_beta, train=train)
        clip_domain_logits = clip_disc(rms_normalise(clip_embedding), beta=grl_beta, train=train)

        outputs = {
            "frame_embeddings": frame_embeddings,
            "clip_embedding": clip_embedding,
            "bn_embedding": bn_embedding,
            "logits": logits,
            "frame_domain_logits": frame_domain_logits,
            "clip_domain_logits": clip_domain_logits,
        }
        if self.infonce_projection:
            scale, bias = bnneck.get_variable("params", "scale"), bnneck.get_variable("params", "bias")
            running = None if train else (bnneck.get_variable("batch_stats", "mean"),
                                          bnneck.get_variable("batch_stats", "var"))
            frames_bn = frame_batch_norm(frame_embeddings, scale, bias, self.bn_axis_name, statistics=running)
            outputs[PROJECTION_KEY] = nn.Dense(
                frames_bn.shape[-1],
                kernel_init=_projection_kernel_init,
                bias_init=nn.initializers.zeros,
                param_dtype=jnp.float32,
                name="projection",
            )(frames_bn)
        return outputs


def frame_batch_norm(frames: jax.Array, scale: jax.Array, bias: jax.Array, axis_name: Optional[str] = None, *,
                     statistics: Optional[tuple[jax.Array, jax.Array]] = None) -> jax.Array:
    """Per-frame features frames [B, T, D] float32 normalised with the BN-neck's scale and bias [D] and
    the batch statistics of the B·T frames (`ops.batch_moments`, biased variance, eps 1e-5; across the
    devices on `axis_name` with sync BN), or with `statistics` (mean [D], var [D]) when given, e.g. the
    running statistics in eval mode. Updates nothing: the caller accounts for the BN-neck's running
    statistics (`BNNeck` with torch_stats). This is the authors' `bn(x)` on the frames, for the InfoNCE
    projection here and for the `reference` variant's temporal-head input `mid`.
    """
    mean, var = ops.batch_moments(frames, axis_name) if statistics is None else statistics
    return (frames - mean) * jax.lax.rsqrt(var + resnet_lib.BN_EPSILON) * scale + bias


def init_model(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Initialise `model` on a zeros input of `input_shape` ([B, T, H, W, 3]) in eval mode.

    Returns (params, batch_stats); batch_stats is an empty dict for a model without BatchNorm.
    """
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init({"params": rng}, jnp.zeros(input_shape, jnp.float32))
    return variables["params"], variables.get("batch_stats", {})
