"""Temporal aggregation of per-frame embeddings.

* `temporal_average` / `TemporalAverage`: the clip embedding (docs/METHOD.md §3.3: v = mean_T x).
* `MultiStageTCN`: the reference's MS-TCN `MultiStageModel` (docs/METHOD.md §3.6), used by the
  `reference` variant on detached per-frame features: S stages of L dilated residual layers,
  per-stage class logits, stage features and BN'd sequence features.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from svreid_jax.models import resnet as resnet_lib
from svreid_jax.models.discriminators import DomainDiscriminator


def temporal_average(frames: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean over time. frames: [B, T, D]; optional mask: [B, T] (1 = valid frame) → [B, D].

    With a mask, only valid frames are averaged (a clip with no valid frame gives zeros).
    """
    if frames.ndim != 3:
        raise ValueError(f"temporal_average expects [B, T, D] frames, got shape {frames.shape}")
    if mask is None:
        return jnp.mean(frames, axis=1)
    w = jnp.asarray(mask, frames.dtype)[..., None]
    return jnp.sum(frames * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class TemporalAverage(nn.Module):
    """Linen wrapper of `temporal_average` (no parameters)."""

    @nn.compact
    def __call__(self, frames: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        return temporal_average(frames, mask)



# ---------------------------------------------------------------------------------------------
# MS-TCN temporal stages (reference variant, docs/METHOD.md §3.6)
#
# Parameter names follow the reference's state_dict with '.' → '_' before list indices:
#   stage1/{conv_1x1, layers_{i}/{conv_dilated, conv_1x1}, conv_out}, stages_{j}/..., bn
# All 1×1 Conv1d are nn.Dense on the channel axis (kernel [in, out]); the dilated k=3 Conv1d is an
# nn.Conv with kernel [3, in, out]. Init is PyTorch's default (U(±1/√fan_in) for weights and
# biases, fan_in = C_in·k); the shared BN has scale N(1, 0.02) and bias 0 (weights_init_kaiming).


def _torch_dense(x: jax.Array, features: int, *, name: str, dtype) -> jax.Array:
    """A Conv1d(k=1) / Linear with PyTorch's default init (must run in a compact method)."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=resnet_lib.torch_default_kernel_init,
                    bias_init=resnet_lib.torch_default_bias_init(x.shape[-1]), name=name)(x)


def _normal_one_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class DilatedResidualLayer(nn.Module):
    """x + Dropout(conv_1x1(ReLU(conv_dilated(x)))); conv_dilated: k=3, dilation d, zero padding d,
    so the length T is kept. x: [B, T, F] → [B, T, F]."""

    dilation: int
    features: int = 64
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        d = self.dilation
        y = nn.Conv(self.features, (3,), kernel_dilation=(d,), padding=((d, d),), dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=resnet_lib.torch_default_kernel_init,
                    bias_init=resnet_lib.torch_default_bias_init(3 * x.shape[-1]), name="conv_dilated")(x)
        y = _torch_dense(nn.relu(y), self.features, name="conv_1x1", dtype=self.dtype)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return x + y


class SingleStageTCN(nn.Module):
    """conv_1x1 (D→F) → `num_layers` dilated residual layers (d = 1, 2, 4, …) → conv_out (F→K).

    x: [B, T, D] → (features [B, T, F], logits [B, T, K])."""

    num_classes: int
    num_layers: int = 10
    features: int = 64
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        f = _torch_dense(x, self.features, name="conv_1x1", dtype=self.dtype)
        for i in range(self.num_layers):
            f = DilatedResidualLayer(2**i, self.features, self.dropout_rate, self.dtype, name=f"layers_{i}")(
                f, train=train)
        logits = _torch_dense(f, self.num_classes, name="conv_out", dtype=self.dtype)
        return f, logits


class MultiStageTCN(nn.Module):
    """The reference's MS-TCN `MultiStageModel` without its domain heads (those take the outputs).

    Stage 1 reads the frame features; stage s > 1 reads the softmax class probabilities of stage
    s − 1 (not detached). Every stage's sequence feature is the shared BatchNorm `bn` of the stage
    features averaged over time; in train mode each of the S calls normalises with its own batch
    statistics and updates the running statistics in turn (S updates per forward, as in PyTorch).

    Attributes:
      num_classes: K, the source identities.
      num_stages: S (4).
      num_layers: dilated residual layers per stage (10: dilations 1 … 512).
      features: F, feature maps per stage (64).
      dropout_rate: dropout inside the residual layers (0.5; rng 'dropout' in train mode).
      dtype: compute dtype; parameters are float32, outputs float32.
      bn_axis_name: pmap/shard_map axis over which `bn` averages its batch statistics (sync BN);
        None for one device or jit.

    Call: x [B, T, D] (channels last), train → dict
      logits [S, B, T, K], features [S, B, T, F], sequence_features [S, B, F].
    """

    num_classes: int
    num_stages: int = 4
    num_layers: int = 10
    features: int = 64
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        if x.ndim != 3:
            raise ValueError(f"MultiStageTCN expects frame features [B, T, D], got shape {x.shape}")
        bn = nn.BatchNorm(use_running_average=not train, momentum=resnet_lib.BN_MOMENTUM,
                          epsilon=resnet_lib.BN_EPSILON, scale_init=_normal_one_init,
                          bias_init=nn.initializers.zeros, param_dtype=jnp.float32,
                          use_fast_variance=False, axis_name=self.bn_axis_name, name="bn")
        logits, features, sequence = [], [], []
        inputs = x
        for s in range(self.num_stages):
            stage = SingleStageTCN(self.num_classes, self.num_layers, self.features, self.dropout_rate,
                                   self.dtype, name="stage1" if s == 0 else f"stages_{s - 1}")
            f, out = stage(inputs, train=train)
            f, out = f.astype(jnp.float32), out.astype(jnp.float32)
            sequence.append(bn(jnp.mean(f, axis=1)))
            features.append(f)
            logits.append(out)
            inputs = jax.nn.softmax(out, axis=-1)
        return {"logits": jnp.stack(logits), "features": jnp.stack(features),
                "sequence_features": jnp.stack(sequence)}


class TemporalDomainHeads(nn.Module):
    """The reference's temporal branch (docs/METHOD.md §3.6): MS-TCN stages plus ONE frame-level and
    ONE sequence-level domain discriminator shared by all stages (GRL inside each discriminator).

    Parameter tree: temporal/… (MultiStageTCN), frame_discriminator/{fc1,fc2},
    clip_discriminator/{fc1,fc2} — the layout `interop.baseline.convert_baseline_temporal` produces.

    Call: frames [B, T, D] (the per-frame BN'd backbone features), frame_beta / sequence_beta (GRL
    coefficients, traced scalars), train → dict of
      logits [S, B, T, K], features [S, B, T, F], sequence_features [S, B, F],
      frame_domain_logits [S, B, T, 2], sequence_domain_logits [S, B, 2]   (float32).
    Domain logits are computed for every stage; the loss picks the stages (the reference: 2 and 3).
    """

    num_classes: int
    num_stages: int = 4
    num_layers: int = 10
    features: int = 64
    dropout_rate: float = 0.5
    disc_dropout: float = 0.5

    @nn.compact
    def __call__(self, frames: jax.Array, *, frame_beta: Any, sequence_beta: Any, train: bool) -> dict[str, jax.Array]:
        out = MultiStageTCN(self.num_classes, self.num_stages, self.num_layers, self.features, self.dropout_rate,
                            name="temporal")(frames, train=train)
        frame_disc = DomainDiscriminator(self.features, 2, self.disc_dropout, name="frame_discriminator")
        seq_disc = DomainDiscriminator(self.features, 2, self.disc_dropout, name="clip_discriminator")
        out["frame_domain_logits"] = frame_disc(out["features"], beta=frame_beta, train=train)
        out["sequence_domain_logits"] = seq_disc(out["sequence_features"], beta=sequence_beta, train=train)
        return out
