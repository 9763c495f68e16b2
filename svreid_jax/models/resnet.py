"""ResNet backbones (Linen, NHWC) whose parameter tree mirrors torchvision's state_dict names.

Module names follow torchvision one-to-one so that a converted `resnet50-*.pth` maps leaf by leaf
(docs/METHOD.md §10.1): `conv1`, `bn1`, `layer{1..4}_{i}/{conv1,bn1,conv2,bn2[,conv3,bn3]}`,
`layer{s}_0/downsample_0` (the 1×1 projection conv) and `downsample_1` (its BN), and `fc` when
`include_fc`. Conv weights are `kernel` [kh, kw, in, out] (torch OIHW → `transpose(2, 3, 1, 0)`),
BN `scale`/`bias` live in 'params' and `mean`/`var` in 'batch_stats'.

Conventions:
  * Bottleneck V1.5: the stride sits on the 3×3 conv (torchvision, flax examples/imagenet).
  * Every conv and pool has explicit symmetric padding. 'SAME' on a strided conv pads
    asymmetrically in XLA and would break parity with PyTorch.
  * BatchNorm: epsilon 1e-5, Flax momentum 0.9 (= PyTorch momentum 0.1). Flax keeps the *biased*
    batch variance in its running statistics where PyTorch keeps the unbiased one (docs/METHOD.md §10.1).
  * `dtype` is the compute dtype (e.g. bfloat16); parameters are always float32.
  * Initialisation follows torchvision: convs Kaiming-normal (fan_out, ReLU gain), BN scale 1 and
    bias 0, the fc layer and the optional conv biases PyTorch's default U(±1/√fan_in).

Shapes: input `[N, H, W, 3]` float → feature map `[N, h, w, C]` (or logits `[N, num_fc_classes]`
when `include_fc`). C = 8·width for BasicBlock nets and 32·width for Bottleneck nets (2048 for
ResNet-50 at width 64); see `feature_dim`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Flax convention: running = momentum·running + (1 − momentum)·batch

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') for every conv.
_conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Linear weight init, kaiming_uniform_(a=√5), is U(±1/√fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default Linear/Conv bias init: U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(x: jax.Array, features: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
          use_bias: bool = False, dtype: Dtype = jnp.float32, name: str) -> jax.Array:
    """Apply an `nn.Conv` with explicit symmetric padding, torchvision init and float32 params.

    Must be called inside a compact method (the conv is registered on the calling module).
    """
    k, p = kernel_size, padding
    fan_in = x.shape[-1] * k * k
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_conv_kernel_init,
        bias_init=torch_default_bias_init(fan_in),
        name=name,
    )(x)


def _bn(x: jax.Array, *, train: bool, dtype: Dtype, name: str, axis_name: Optional[str] = None) -> jax.Array:
    """BatchNorm with PyTorch's eps/momentum; `axis_name` (a pmap/shard_map axis) averages the batch
    statistics over that axis (sync BN), None keeps them to the arrays this call sees."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        axis_name=axis_name,
        name=name,
    )(x)


def _shortcut(x: jax.Array, out_ch: int, stride: int, conv_bias: bool, *, train: bool, dtype: Dtype,
              bn_axis_name: Optional[str] = None) -> jax.Array:
    """The residual branch: identity, or torchvision's `downsample` (1×1 conv + BN) when the shape changes.

    Called inside a block's compact method, so the layers register as that block's downsample_0/1.
    """
    if stride == 1 and x.shape[-1] == out_ch:
        return x
    shortcut = _conv(x, out_ch, 1, stride=stride, use_bias=conv_bias, dtype=dtype, name="downsample_0")
    return _bn(shortcut, train=train, dtype=dtype, name="downsample_1", axis_name=bn_axis_name)


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3×3 (stride) – BN – ReLU – 3×3 – BN, + identity/projection, ReLU."""

    features: int
    stride: int = 1
    conv_bias: bool = False
    dtype: Dtype = jnp.float32
    bn_axis_name: Optional[str] = None

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out_ch = self.features * self.expansion
        y = _conv(x, self.features, 3, stride=self.stride, padding=1, use_bias=self.conv_bias,
                  dtype=self.dtype, name="conv1")
        y = nn.relu(_bn(y, train=train, dtype=self.dtype, name="bn1", axis_name=self.bn_axis_name))
        y = _conv(y, self.features, 3, padding=1, use_bias=self.conv_bias, dtype=self.dtype, name="conv2")
        y = _bn(y, train=train, dtype=self.dtype, name="bn2", axis_name=self.bn_axis_name)
        return nn.relu(y + _shortcut(x, out_ch, self.stride, self.conv_bias, train=train, dtype=self.dtype,
                                 bn_axis_name=self.bn_axis_name))


class Bottleneck(nn.Module):
    """torchvision Bottleneck V1.5: 1×1 – 3×3 (stride) – 1×1 (×4), each followed by BN, + shortcut, ReLU."""

    features: int
    stride: int = 1
    conv_bias: bool = False
    dtype: Dtype = jnp.float32
    bn_axis_name: Optional[str] = None

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out_ch = self.features * self.expansion
        y = _conv(x, self.features, 1, use_bias=self.conv_bias, dtype=self.dtype, name="conv1")
        y = nn.relu(_bn(y, train=train, dtype=self.dtype, name="bn1", axis_name=self.bn_axis_name))
        y = _conv(y, self.features, 3, stride=self.stride, padding=1, use_bias=self.conv_bias,
                  dtype=self.dtype, name="conv2")
        y = nn.relu(_bn(y, train=train, dtype=self.dtype, name="bn2", axis_name=self.bn_axis_name))
        y = _conv(y, out_ch, 1, use_bias=self.conv_bias, dtype=self.dtype, name="conv3")
        y = _bn(y, train=train, dtype=self.dtype, name="bn3", axis_name=self.bn_axis_name)
        return nn.relu(y + _shortcut(x, out_ch, self.stride, self.conv_bias, train=train, dtype=self.dtype,
                                 bn_axis_name=self.bn_axis_name))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet with torchvision parameter names.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      block: 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50/101).
      width: base channel count (64 for the real networks; 8 or 16 for tests and the demo).
      last_stride: stride of the last stage (re-ID uses 1: 16×8 maps for 256×128 input).
      stem_pool_padding: padding of the stem's 3×3/2 max-pool (torchvision 1; the reference 0).
      conv_bias: give every conv a bias (the reference's inflated convs carry random ones).
      remat: recompute each residual block's activations in the backward pass instead of keeping
        them (jax.checkpoint): less memory for large batches, about one more forward of compute.
      include_fc: global-average-pool and classify with `fc` (ImageNet head) instead of returning
        the feature map.
      num_fc_classes: outputs of `fc`.
      dtype: compute dtype; parameters stay float32.
      bn_axis_name: pmap/shard_map axis over which every BatchNorm averages its batch statistics
        (sync BN); None (default) for one device or jit, where the statistics are already global.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    width: int = 64
    last_stride: int = 1
    stem_pool_padding: int = 1
    conv_bias: bool = False
    remat: bool = False
    include_fc: bool = False
    num_fc_classes: int = 1000
    dtype: Dtype = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [N, H, W, 3] float → [N, h, w, C] in `dtype` (or [N, num_fc_classes] logits)."""
        if self.block not in _BLOCKS:
            raise ValueError(f"ResNet.block must be one of {sorted(_BLOCKS)}, got {self.block!r}")
        block_cls = _BLOCKS[self.block]
        if self.remat:
            # `train` (argument 2 counting self) must stay a Python bool: it picks BN's mode.
            block_cls = nn.remat(block_cls, static_argnums=(2,))
        x = jnp.asarray(x, self.dtype)
        x = _conv(x, self.width, 7, stride=2, padding=3, use_bias=self.conv_bias, dtype=self.dtype, name="conv1")
        x = nn.relu(_bn(x, train=train, dtype=self.dtype, name="bn1", axis_name=self.bn_axis_name))
        p = self.stem_pool_padding
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((p, p), (p, p)))
        for s, num_blocks in enumerate(self.stage_sizes):
            features = self.width * 2**s
            if s == 0:
                stage_stride = 1
            elif s == len(self.stage_sizes) - 1:
                stage_stride = self.last_stride
            else:
                stage_stride = 2
            for i in range(num_blocks):
                x = block_cls(
                    features,
                    stride=stage_stride if i == 0 else 1,
                    conv_bias=self.conv_bias,
                    dtype=self.dtype,
                    bn_axis_name=self.bn_axis_name,
                    name=f"layer{s + 1}_{i}",
                )(x, train)
                x = self.after_block(x, stage=s + 1, block=i, train=train)
        if not self.include_fc:
            return x
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(
            self.num_fc_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=torch_default_kernel_init,
            bias_init=torch_default_bias_init(x.shape[-1]),
            name="fc",
        )(x)

    def after_block(self, x: jax.Array, *, stage: int, block: int, train: bool) -> jax.Array:
        """Plug-in hook, called on the output of block `layer{stage}_{block}` (1-based stage, 0-based
        block). The identity here; subclasses (svreid_jax.models.sinet.VideoResNet) override it to
        insert modules, which they may create inline since it runs inside the compact `__call__`."""
        del stage, block, train
        return x


# depth → (stage_sizes, block, default width)
PRESETS: dict[Any, tuple[tuple[int, ...], str, int]] = {
    "tiny": ((1, 1, 1, 1), "basic", 8),
    18: ((2, 2, 2, 2), "basic", 64),
    34: ((3, 4, 6, 3), "basic", 64),
    50: ((3, 4, 6, 3), "bottleneck", 64),
    101: ((3, 4, 23, 3), "bottleneck", 64),
}


def _preset(depth: int | str) -> tuple[tuple[int, ...], str, int]:
    key = depth
    if isinstance(depth, str) and depth.strip().isdigit():
        key = int(depth)
    if key not in PRESETS:
        raise ValueError(f"unknown ResNet depth {depth!r}; expected one of {list(PRESETS)}")
    return PRESETS[key]


def resnet(depth: int | str, **kw: Any) -> ResNet:
    """Build a ResNet by depth: 18, 34, 50, 101, or 'tiny' ((1,1,1,1) BasicBlocks, width 8).

    Keyword arguments are `ResNet` fields and override the preset (e.g. `width=16` for 'tiny').
    """
    stage_sizes, block, width = _preset(depth)
    kw.setdefault("width", width)
    return ResNet(stage_sizes=stage_sizes, block=block, **kw)


def feature_dim(depth: int | str, width: int | None = None) -> int:
    """Channels of the final feature map of `resnet(depth, width=width)` (2048 for ResNet-50)."""
    stage_sizes, block, default_width = _preset(depth)
    w = default_width if width is None else width
    return w * 2 ** (len(stage_sizes) - 1) * _BLOCKS[block].expansion


# ---------------------------------------------------------------------------------------------
# As a backbone of the registry (svreid_jax.models.backbones)

# The ResNet family's sub-config: these `config.model` fields, passed on to `resnet(...)`.
BACKBONE_FIELDS = ("depth", "width", "last_stride", "stem_pool_padding", "conv_bias", "remat")


def backbone_options(model_config: Any) -> dict[str, Any]:
    """The ResNet fields of `config.model` (BACKBONE_FIELDS)."""
    return {name: model_config[name] for name in BACKBONE_FIELDS}


def check_backbone_options(options: Any) -> dict[str, Any]:
    """A plain dict of `options`, checked against BACKBONE_FIELDS (unknown fields and a missing depth raise)."""
    kw = dict(options)
    unknown = sorted(set(kw) - set(BACKBONE_FIELDS))
    if unknown:
        raise ValueError(f"ResNet backbone: unknown field(s) {unknown}; expected some of {list(BACKBONE_FIELDS)}")
    if "depth" not in kw:
        raise ValueError("ResNet backbone needs a 'depth' (18, 34, 50, 101 or 'tiny')")
    _preset(kw["depth"])
    return kw


def build_backbone(options: Any, *, clip_len: int, dtype: Dtype, bn_axis_name: Optional[str], name: str) -> ResNet:
    """The plain per-frame ResNet of `options['depth']`: frames [B·T, H, W, 3] → feature maps [B·T, h, w, D]."""
    del clip_len  # frames are independent
    kw = dict(options)
    return resnet(kw.pop("depth"), include_fc=False, dtype=dtype, bn_axis_name=bn_axis_name, name=name, **kw)


def backbone_feature_dim(options: Any) -> int:
    return feature_dim(options["depth"], options.get("width"))
