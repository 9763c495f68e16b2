"""The composed video re-ID model: per-frame ResNet → spatial pooling → temporal average → BN-neck →
identity classifier, plus frame- and sequence-level domain discriminators behind the GRL.

This is the `paper` variant's placement (DESIGN.md): the discriminators sit on the backbone's own
per-frame and clip embeddings, so the reversed adversarial gradient reaches the deployed network
(unlike the reference code, method-spec §10 D1, where they sit on a detached MS-TCN branch).

Parameter tree ('params'; BN statistics mirror it in 'batch_stats'):
  backbone/...              ResNet with torchvision names (svreid_jax.models.resnet)
  bnneck/{scale,bias}       BatchNorm on the clip embedding
  classifier/{kernel,bias}  Dense(num_classes)
  frame_discriminator/{fc1,fc2}, clip_discriminator/{fc1,fc2}
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from svreid_jax.models import resnet as resnet_lib
from svreid_jax.models.discriminators import DomainDiscriminator
from svreid_jax.models.temporal import temporal_average

Dtype = Any

OUTPUT_KEYS = ("frame_embeddings", "clip_embedding", "bn_embedding", "logits", "frame_domain_logits",
               "clip_domain_logits")

# Backbone config fields ReIDNet passes on to `resnet(...)`; `depth` selects the preset.
BACKBONE_FIELDS = ("depth", "width", "last_stride", "stem_pool_padding", "conv_bias")


def _backbone_kwargs(backbone: Any) -> dict[str, Any]:
    """dict / FrozenDict / ml_collections.ConfigDict → plain dict, checked against BACKBONE_FIELDS."""
    if hasattr(backbone, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        kw = dict(backbone.to_dict())
    elif isinstance(backbone, Mapping):
        kw = dict(backbone)
    else:
        raise TypeError(f"ReIDNet.backbone must be a mapping of resnet() arguments, got {type(backbone).__name__}")
    unknown = sorted(set(kw) - set(BACKBONE_FIELDS))
    if unknown:
        raise ValueError(f"ReIDNet.backbone: unknown field(s) {unknown}; expected some of {list(BACKBONE_FIELDS)}")
    if "depth" not in kw:
        raise ValueError("ReIDNet.backbone needs a 'depth' (18, 34, 50, 101 or 'tiny')")
    return kw


def embedding_dim(backbone: Any) -> int:
    """Embedding size D of a ReIDNet with this backbone config (2048 for ResNet-50)."""
    kw = _backbone_kwargs(backbone)
    return resnet_lib.feature_dim(kw["depth"], kw.get("width"))


def rms_normalise(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / RMS(x) over the last axis (= √D · x / ‖x‖): parameter-free, per vector, float32."""
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _bnneck_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class ReIDNet(nn.Module):
    """Video re-ID network with domain discriminators.

    Attributes:
      num_classes: source identities (classifier outputs).
      backbone: `resnet(...)` arguments: `depth` (18/34/50/101/'tiny') and optionally `width`,
        `last_stride`, `stem_pool_padding`, `conv_bias`. A dict or ml_collections.ConfigDict.
      frame_pooling: per-frame spatial pooling over H×W: 'max' (reference) or 'avg'.
      disc_hidden: hidden units of both domain discriminators.
      disc_dropout: dropout rate inside the discriminators.
      dtype: backbone compute dtype (e.g. jnp.bfloat16). Pooled embeddings and everything after
        them (BN-neck, classifier, discriminators) are computed in float32; params are float32.

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
    statistics, method-spec §3.2).
    """

    num_classes: int
    backbone: Any
    frame_pooling: str = "max"
    disc_hidden: int = 256
    disc_dropout: float = 0.5
    dtype: Dtype = jnp.float32

    def __post_init__(self):
        # Store the backbone config as a FrozenDict so the module stays hashable (Linen hashes
        # modules in nn.jit/nn.remat and when they are static arguments); ConfigDicts are accepted.
        object.__setattr__(self, "backbone", flax.core.FrozenDict(_backbone_kwargs(self.backbone)))
        super().__post_init__()

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool, grl_beta: Any = 0.0) -> dict[str, jax.Array]:
        """video: [B, T, H, W, 3] float32, normalised → dict with

        frame_embeddings [B, T, D], clip_embedding [B, D], bn_embedding [B, D],
        logits [B, num_classes], frame_domain_logits [B, T, 2], clip_domain_logits [B, 2]
        (all float32). `grl_beta` scales the reversed gradient of both discriminators; it may be a
        traced scalar. `train` selects batch statistics (and updates 'batch_stats' when mutable)
        and enables dropout (rng 'dropout').
        """
        if video.ndim != 5:
            raise ValueError(f"ReIDNet expects video [B, T, H, W, C], got shape {video.shape}")
        if self.frame_pooling not in ("max", "avg"):
            raise ValueError(f"ReIDNet.frame_pooling must be 'max' or 'avg', got {self.frame_pooling!r}")
        b, t = video.shape[:2]
        kw = _backbone_kwargs(self.backbone)
        depth = kw.pop("depth")
        net = resnet_lib.resnet(depth, include_fc=False, dtype=self.dtype, name="backbone", **kw)

        fmap = net(video.reshape((b * t,) + video.shape[2:]), train=train)  # [B·T, h, w, D]
        fmap = fmap.astype(jnp.float32)
        pooled = jnp.max(fmap, axis=(1, 2)) if self.frame_pooling == "max" else jnp.mean(fmap, axis=(1, 2))
        frame_embeddings = pooled.reshape(b, t, -1)  # [B, T, D]
        clip_embedding = temporal_average(frame_embeddings)  # [B, D]

        bn_embedding = nn.BatchNorm(
            use_running_average=not train,
            momentum=resnet_lib.BN_MOMENTUM,
            epsilon=resnet_lib.BN_EPSILON,
            scale_init=_bnneck_scale_init,
            bias_init=nn.initializers.zeros,
            param_dtype=jnp.float32,
            name="bnneck",
        )(clip_embedding)
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

        return {
            "frame_embeddings": frame_embeddings,
            "clip_embedding": clip_embedding,
            "bn_embedding": bn_embedding,
            "logits": logits,
            "frame_domain_logits": frame_domain_logits,
            "clip_domain_logits": clip_domain_logits,
        }


def init_model(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Initialise `model` on a zeros input of `input_shape` ([B, T, H, W, 3]) in eval mode.

    Returns (params, batch_stats); batch_stats is an empty dict for a model without BatchNorm.
    """
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init({"params": rng}, jnp.zeros(input_shape, jnp.float32))
    return variables["params"], variables.get("batch_stats", {})
