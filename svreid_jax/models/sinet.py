"""SINet plug-ins (docs/METHOD.md §3.2) and the video ResNet that hosts them.

The authors' default backbone (`-a sinet`, a copy of SINet, Bai et al. CVPR'22) is a per-frame
ResNet-50 (temporal kernel 1 everywhere) with modules that mix information across the T frames of a
clip, inserted right after some residual blocks:

  arch        layer2 (4 blocks)          layer3 (6 blocks)
  'resnet50'  –                          –
  'sinet'     IDM after blocks 1 and 3   SBM after blocks 1, 3, 5 (split positions 0, 1, 2)
  'sbnet'     –                          SBM as above
  'idnet'     IDM after blocks 1 and 3   –

Layout: the backbone works on frames, `[B·T, H, W, C]` with the T frames of a clip consecutive
(what `x.reshape((B·T,) + x.shape[2:])` of a `[B, T, H, W, C]` video gives); the plug-ins regroup
them as `[B, T, h, w, C]`. So `VideoResNet` must know T (`seq_len`).

Parameter names. The ResNet part keeps torchvision's names (`conv1`, `layer2_1/conv3`, ...) so
`svreid_jax.interop.torchvision.load_backbone_weights` still maps ImageNet weights leaf by leaf; the
plug-ins sit beside the blocks as `layer2_1_idm`, `layer2_3_idm`, `layer3_1_sbm`, `layer3_3_sbm`,
`layer3_5_sbm`. Inside a plug-in the sub-modules carry the PyTorch `nn.Sequential` names with '.'
replaced by '_' (IDM: `chl_reduction_0` conv + `chl_reduction_1` BN, `thw_reduction_0/1`,
`thw_expansion_0`, `chl_expansion_0`; SBM: `kernel_0` conv + `kernel_1` BN, `se_1`, `se_3`). Every
1×1(×1) convolution of a plug-in is an `nn.Dense` on the channel axis (kernel [in, out]).

Initialisation as in the reference: plug-in convs N(0, √(2/n)) with n = C_out for 1×1 kernels
(an untruncated normal), their biases PyTorch's default U(±1/√C_in); BN scale 1, bias 0; IDM's last
conv (`chl_expansion_0`) zero in weight and bias, so an IDM is the identity at init (its input is
already a ReLU output).

Differences from the reference, on purpose:
  * IDM's position count N = T·h·w is taken from the feature map at init; the reference hard-codes
    T·32·16 for 512 channels, i.e. 256×128 input. Applying a model to another frame size or T than
    it was initialised with raises a ValueError.
  * SBM: where the response map is exactly uniform, the reference divides 0 by 0 in the former-frame
    update (NaN); here that term is 0 (it is the limit: no suppressed position, nothing to propagate).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from svreid_jax.models import resnet as resnet_lib

Dtype = Any

# Plug-in positions per arch: (stage, block) → ('idm', {}) or ('sbm', {'split_pos': p}).
_IDM_POSITIONS = {(2, 1): ("idm", {}), (2, 3): ("idm", {})}
_SBM_POSITIONS = {(3, 1): ("sbm", {"split_pos": 0}), (3, 3): ("sbm", {"split_pos": 1}),
                  (3, 5): ("sbm", {"split_pos": 2})}
PLUGINS: dict[str, dict[tuple[int, int], tuple[str, dict[str, Any]]]] = {
    "resnet": {},
    "sinet": {**_IDM_POSITIONS, **_SBM_POSITIONS},
    "sbnet": dict(_SBM_POSITIONS),
    "idnet": dict(_IDM_POSITIONS),
}
ARCHS = tuple(PLUGINS)

# Reference conv init: normal_(0, sqrt(2 / n)), n = kernel volume · C_out (= C_out for 1×1 kernels),
# i.e. fan_out scaling of a Dense kernel [in, out]. JAX's 'normal' is untruncated like torch's.
plugin_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense(x: jax.Array, features: int, *, name: str, dtype: Dtype,
           kernel_init: Callable[..., jax.Array] = plugin_kernel_init,
           bias_init: Optional[Callable[..., jax.Array]] = None) -> jax.Array:
    """A 1×1 convolution on the last axis with the plug-ins' init (must run in a compact method)."""
    if bias_init is None:
        bias_init = resnet_lib.torch_default_bias_init(x.shape[-1])
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                    bias_init=bias_init, name=name)(x)


def _bn(x: jax.Array, *, train: bool, dtype: Dtype, name: str, axis_name: Optional[str] = None) -> jax.Array:
    """BatchNorm over every axis but the last, PyTorch eps/momentum, scale 1, bias 0; two-pass
    batch variance (like PyTorch) rather than E[x²] − E[x]², which loses float32 precision.
    `axis_name`: average the batch statistics over this pmap/shard_map axis (sync BN)."""
    return nn.BatchNorm(use_running_average=not train, momentum=resnet_lib.BN_MOMENTUM,
                        epsilon=resnet_lib.BN_EPSILON, dtype=dtype, param_dtype=jnp.float32,
                        use_fast_variance=False, axis_name=axis_name, name=name)(x)


def _split_clips(x: jax.Array, seq_len: int, who: str) -> jax.Array:
    """[B·T, h, w, C] → [B, T, h, w, C]."""
    if x.ndim != 4:
        raise ValueError(f"{who} expects frames [B·T, h, w, C], got shape {x.shape}")
    if seq_len < 1 or x.shape[0] % seq_len:
        raise ValueError(f"{who}: {x.shape[0]} frames are not a whole number of clips of seq_len={seq_len}")
    return x.reshape((x.shape[0] // seq_len, seq_len) + x.shape[1:])


class IDM(nn.Module):
    """Integration-Distribution Module: a bottleneck over channels and over the N = T·h·w
    spatio-temporal positions of a clip, added back to its input.

      z = BN(conv_{C→C/f}(x))                        per position          [B, N, C']
      u = conv_{N/f→N}(BN(conv_{N→N/f}(zᵀ)))ᵀ + z    positions as channels
      y = ReLU(x + conv_{C'→C}(u))                   last conv zero-init → y = x at init

    Attributes:
      seq_len: frames per clip T.
      factor: reduction factor of both bottlenecks (16).
      dtype: compute dtype.
      bn_axis_name: sync-BN axis (see resnet.ResNet.bn_axis_name).

    Input and output: [B·T, h, w, C]. N is fixed by the shape seen at init.
    """

    seq_len: int
    factor: int = 16
    dtype: Dtype = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        clips = _split_clips(x, self.seq_len, "IDM")
        b, t, h, w, c = clips.shape
        n = t * h * w
        if c % self.factor or n % self.factor:
            raise ValueError(f"IDM: channels ({c}) and positions T·h·w = {t}·{h}·{w} = {n} must both be "
                             f"divisible by factor={self.factor}")
        params = self.variables.get("params", {})
        if "thw_reduction_0" in params:
            n_init = params["thw_reduction_0"]["kernel"].shape[0]
            if n_init != n:
                raise ValueError(f"IDM was initialised for T·h·w = {n_init} positions but is applied to "
                                 f"T·h·w = {t}·{h}·{w} = {n}; the frame size and seq_len must stay as at init")
        z = _dense(clips, c // self.factor, name="chl_reduction_0", dtype=self.dtype)
        z = _bn(z, train=train, dtype=self.dtype, name="chl_reduction_1",
                axis_name=self.bn_axis_name)  # stats over B, T, h, w
        z = z.reshape(b, n, c // self.factor).transpose(0, 2, 1)  # [B, C', N]: positions as channels
        u = _dense(z, n // self.factor, name="thw_reduction_0", dtype=self.dtype)
        u = _bn(u, train=train, dtype=self.dtype, name="thw_reduction_1",
                axis_name=self.bn_axis_name)  # stats over B, C'
        u = _dense(u, n, name="thw_expansion_0", dtype=self.dtype) + z
        u = u.transpose(0, 2, 1).reshape(b, t, h, w, c // self.factor)
        u = _dense(u, c, name="chl_expansion_0", dtype=self.dtype, kernel_init=nn.initializers.zeros,
                   bias_init=nn.initializers.zeros)
        return nn.relu(clips.astype(u.dtype) + u).reshape(x.shape)


def _l1_normalise(a: jax.Array, axis: int) -> jax.Array:
    """torch F.normalize(p=1): a / max(Σ|a|, 1e-12)."""
    return a / jnp.maximum(jnp.sum(jnp.abs(a), axis=axis, keepdims=True), 1e-12)


class SBM(nn.Module):
    """Salient-to-Broad Module (docs/METHOD.md §3.2): the "former" frames 0..split_pos build a
    sample-specific k×k kernel; its response on the "latter" frames marks their salient regions,
    which are damped (exp(β(r−1)) where the softmax attention is above uniform), and the two parts
    exchange a little pooled information (cpm_alpha). No residual wrapper.

    Attributes:
      seq_len: frames per clip T; must be 4, or 8 (run as two 4-frame halves).
      split_pos: last index of the former frames (0, 1 or 2).
      k: kernel size of the dynamic kernel (3).
      exp_beta: suppression sharpness (5).
      cpm_alpha: cross-propagation weight (0.1).
      inter_dim: SE hidden width (default C/4).
      dtype: compute dtype of the 1×1 convs; the attention maths runs in float32.
      bn_axis_name: sync-BN axis (see resnet.ResNet.bn_axis_name).

    Input and output: [B·T, h, w, C] with h, w ≥ 3.
    """

    seq_len: int
    split_pos: int = 0
    k: int = 3
    exp_beta: float = 5.0
    cpm_alpha: float = 0.1
    inter_dim: Optional[int] = None
    dtype: Dtype = jnp.float32
    bn_axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.seq_len not in (4, 8):
            raise ValueError(f"SBM works on clips of 4 frames (or 8, as two halves of 4); got seq_len={self.seq_len}. "
                             "Use seq_len 4 or 8 with arch 'sinet'/'sbnet', or an arch without SBM.")
        if not 0 <= self.split_pos < 3:
            raise ValueError(f"SBM.split_pos must be 0, 1 or 2, got {self.split_pos}")
        clips = _split_clips(x, self.seq_len, "SBM")
        b, t, h, w, c = clips.shape
        if h < 3 or w < 3:
            raise ValueError(f"SBM needs feature maps of at least 3×3 (it compares the centre with the whole "
                             f"map), got {h}×{w}")
        if t == 8:
            clips = clips.reshape(b * 2, 4, h, w, c)
        out = self._forward(clips, train=train)
        return out.reshape(x.shape)

    def _forward(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x: [b, 4, h, w, C] → [b, 4, h, w, C]."""
        b, t, h, w, c = x.shape
        p, kk = self.split_pos, self.k * self.k
        inter = self.inter_dim or c // 4
        x32 = x.astype(jnp.float32)
        xf, xl = x32[:, : p + 1], x32[:, p + 1:]

        # 1. Channel gate: SE on the clip's global average, times a detached "centre brighter than
        #    the whole map" indicator (both over all 4 frames).
        pooled = jnp.mean(x32, axis=(1, 2, 3))  # [b, C]
        se = nn.relu(_dense(pooled, inter, name="se_1", dtype=self.dtype))
        se = nn.sigmoid(_dense(se, c, name="se_3", dtype=self.dtype).astype(jnp.float32))
        centre = jnp.mean(x32[:, :, 1:-1, 1:-1], axis=(1, 2, 3)) / (jnp.mean(x32, axis=(1, 2, 3)) + 1e-8)
        cal = (se * jax.lax.stop_gradient((centre > 1).astype(jnp.float32)))[:, None, None, None, :]
        xf_se = nn.relu(xf * cal)  # [b, tf, h, w, C]
        xl_se = nn.relu(xl * cal)  # [b, tl, h, w, C]

        # 2. Spatial attention over the former frames' positions → one C×k×k kernel per sample.
        att = _dense(xf_se.astype(self.dtype), kk, name="kernel_0", dtype=self.dtype)
        att = _bn(att, train=train, dtype=self.dtype, name="kernel_1", axis_name=self.bn_axis_name)
        att = nn.relu(att).astype(jnp.float32)
        att = att.reshape(b, -1, kk)  # [b, N_f, k·k], positions in (t, h, w) order
        att = _l1_normalise(_l1_normalise(att, axis=-1), axis=1)
        kernel = jnp.einsum("bnc,bnk->bck", xf_se.reshape(b, -1, c), att)  # [b, C, k·k]

        # 3. Correlate the latter frames with their sample's kernel (replicate padding), sum over C.
        pad = (self.k - 1) // 2
        xl_pad = jnp.pad(xl_se, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        resp = 0.0
        for i in range(self.k):
            for j in range(self.k):
                window = xl_pad[:, :, i:i + h, j:j + w]
                resp = resp + jnp.einsum("bthwc,bc->bthw", window, kernel[:, :, i * self.k + j])
        resp = resp / kk  # [b, tl, h, w]

        # 4. Suppression: r = 1 / (softmax · h·w); f = exp(β(r − 1)) where r < 1, else 1.
        soft = jax.nn.softmax(resp.reshape(b, -1, h * w), axis=-1).reshape(resp.shape)
        r = 1.0 / (jnp.maximum(soft, 1e-4) * (h * w))
        below = jax.lax.stop_gradient((r < 1).astype(jnp.float32))
        f = (jnp.exp((r - 1.0) * below * self.exp_beta) * below + (1.0 - below))[..., None]  # [b, tl, h, w, 1]

        # 5. Cross propagation between the two parts.
        xl_out = xl * f + self.cpm_alpha * jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
        num = jnp.mean((1.0 - f) * xl, axis=(1, 2, 3), keepdims=True)  # [b, 1, 1, 1, C]
        den = jnp.mean(1.0 - f, axis=(1, 2, 3), keepdims=True)  # [b, 1, 1, 1, 1]
        safe_den = jnp.where(den > 0, den, 1.0)
        xf_out = xf + self.cpm_alpha * jnp.where(den > 0, num / safe_den, 0.0)
        return jnp.concatenate([xf_out, xl_out], axis=1).astype(x.dtype)


def check_arch(arch: str, stage_sizes: Any) -> None:
    """Raise a ValueError unless `arch` is known and the network has its plug-in positions."""
    if arch not in PLUGINS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHS)}")
    for stage, block in PLUGINS[arch]:
        if len(stage_sizes) < stage or stage_sizes[stage - 1] <= block:
            raise ValueError(f"arch {arch!r} inserts a module after layer{stage} block {block}, but this "
                             f"ResNet has stage sizes {tuple(stage_sizes)}; use depth 50 (the reference) "
                             f"(34 and 101 also have the positions)")


class VideoResNet(resnet_lib.ResNet):
    """`ResNet` (torchvision names, all its fields) with the plug-ins of `arch` after their blocks.

    Attributes (besides ResNet's):
      arch: 'resnet' (no plug-ins), 'sinet', 'sbnet' or 'idnet'.
      seq_len: frames per clip T of the [B·T, H, W, 3] input.

    `arch='resnet'` gives exactly `ResNet` (same tree, same outputs).
    """

    arch: str = "sinet"
    seq_len: int = 4

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        check_arch(self.arch, self.stage_sizes)
        if x.ndim == 4 and x.shape[0] % self.seq_len:
            raise ValueError(f"VideoResNet: {x.shape[0]} frames are not a whole number of clips of "
                             f"seq_len={self.seq_len}")
        return super().__call__(x, train=train)

    def after_block(self, x: jax.Array, *, stage: int, block: int, train: bool) -> jax.Array:
        spec = PLUGINS[self.arch].get((stage, block))
        if spec is None:
            return x
        kind, kw = spec
        name = f"layer{stage}_{block}_{kind}"
        if kind == "idm":
            return IDM(seq_len=self.seq_len, dtype=self.dtype, bn_axis_name=self.bn_axis_name, name=name,
                       **kw)(x, train=train)
        return SBM(seq_len=self.seq_len, dtype=self.dtype, bn_axis_name=self.bn_axis_name, name=name,
                   **kw)(x, train=train)


def video_resnet(arch: str, seq_len: int, depth: int | str = 50, **kw: Any) -> VideoResNet:
    """Build a `VideoResNet` from a ResNet depth preset (see `resnet.resnet`); keyword arguments are
    ResNet fields, e.g. `width`, `last_stride`, `stem_pool_padding`, `conv_bias`, `dtype`, `name`.

    The reference backbone is `video_resnet('sinet', 4, 50, last_stride=1, stem_pool_padding=0,
    conv_bias=True)`.
    """
    stage_sizes, block, width = resnet_lib._preset(depth)
    check_arch(arch, stage_sizes)
    if arch in ("sinet", "sbnet") and seq_len not in (4, 8):
        raise ValueError(f"arch {arch!r} has SBM modules, which need seq_len 4 (or 8); got {seq_len}")
    kw.setdefault("width", width)
    return VideoResNet(stage_sizes=stage_sizes, block=block, arch=arch, seq_len=seq_len, **kw)


# ---------------------------------------------------------------------------------------------
# As backbones of the registry (svreid_jax.models.backbones): the ResNet family's fields plus the arch


def check_backbone_options(arch: str, options: Any) -> dict[str, Any]:
    """The ResNet options (resnet.check_backbone_options), checked to have `arch`'s plug-in positions."""
    kw = resnet_lib.check_backbone_options(options)
    check_arch(arch, resnet_lib._preset(kw["depth"])[0])
    return kw


def build_backbone(arch: str, options: Any, *, clip_len: int, dtype: Dtype, bn_axis_name: Optional[str],
                   name: str) -> VideoResNet:
    """`video_resnet(arch, clip_len, ...)`: the plug-ins mix the T = clip_len frames of each clip."""
    kw = dict(options)
    return video_resnet(arch, clip_len, kw.pop("depth"), include_fc=False, dtype=dtype, bn_axis_name=bn_axis_name,
                        name=name, **kw)

