"""Numerical parity with PyTorch (optional: skipped without torch).

The PyTorch modules below are written in this file from docs/METHOD.md §3 (a torchvision-named
ResNet, the reference's inflated per-frame video ResNet with IDM/SBM, the MS-TCN), with the state_dict
names the converters expect. Weights go torch → our converters → Flax, and we compare

  * eval-mode outputs: max |Δ| ≤ 1e-4 · max |torch output| (per output);
  * one train-mode forward: outputs with batch statistics, and every BatchNorm's running
    statistics. PyTorch momentum 0.1 = Flax momentum 0.9. The running *mean* must agree; for the
    running *variance* PyTorch blends in the unbiased batch variance and Flax the biased one, so we
    compare after undoing that: (flax_new − 0.9·old)·n/(n−1) + 0.9·old = torch_new, with n the
    number of values per channel the BN saw (recorded with forward hooks).
"""
import copy
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (pip install torch==2.13.0)")
pytestmark = pytest.mark.torch  # run by the second CI stage, which installs the torch extra
tnn = torch.nn
F = torch.nn.functional

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from svreid_jax.interop import baseline  # noqa: E402
from svreid_jax.interop import torchvision as tv  # noqa: E402
from svreid_jax.models import reid, resnet, sinet  # noqa: E402
from svreid_jax.models.temporal import MultiStageTCN  # noqa: E402

RTOL = 1e-4


def _close(name, got, want, rtol=RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max()) / scale
    print(f"{name}: max|Δ|/max|ref| = {err:.2e}")
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol}"
    return err


# ---------------------------------------------------------------------------------------------
# PyTorch modules written from the spec


class TorchBlock(tnn.Module):
    """torchvision Basic/Bottleneck (V1.5) block; `video` makes every conv a Conv3d (1, k, k) and
    every BN a BatchNorm3d, which keeps the state_dict names and gives [O, I, 1, kh, kw] weights."""

    def __init__(self, kind, cin, planes, stride, video, bias):
        super().__init__()
        if video:
            conv = lambda i, o, k, s, p: tnn.Conv3d(i, o, (1, k, k), (1, s, s), (0, p, p), bias=bias)  # noqa: E731
            bn = tnn.BatchNorm3d
        else:
            conv = lambda i, o, k, s, p: tnn.Conv2d(i, o, k, s, p, bias=bias)  # noqa: E731
            bn = tnn.BatchNorm2d
        self.kind = kind
        if kind == "basic":
            out = planes
            self.conv1, self.bn1 = conv(cin, planes, 3, stride, 1), bn(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, 1, 1), bn(planes)
        else:
            out = planes * 4
            self.conv1, self.bn1 = conv(cin, planes, 1, 1, 0), bn(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride, 1), bn(planes)
            self.conv3, self.bn3 = conv(planes, out, 1, 1, 0), bn(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = tnn.Sequential(conv(cin, out, 1, stride, 0), bn(out))
        self.out_channels = out

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.kind == "bottleneck":
            y = self.bn3(self.conv3(F.relu(y)))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchIDM(tnn.Module):
    """IDM as docs/METHOD.md §3.2 describes it, on (B, C, T, h, w) with N = T·h·w positions."""

    def __init__(self, c, n, factor=16):
        super().__init__()
        self.chl_reduction = tnn.Sequential(tnn.Conv3d(c, c // factor, 1), tnn.BatchNorm3d(c // factor))
        self.thw_reduction = tnn.Sequential(tnn.Conv2d(n, n // factor, 1), tnn.BatchNorm2d(n // factor))
        self.thw_expansion = tnn.Sequential(tnn.Conv2d(n // factor, n, 1))
        self.chl_expansion = tnn.Sequential(tnn.Conv3d(c // factor, c, 1))  # not zeroed: a real test

    def forward(self, x):
        z = self.chl_reduction(x)
        b, c2, t, h, w = z.shape
        z = z.reshape(b, c2, t * h * w, 1).transpose(1, 2)  # (b, N, C', 1): positions are channels
        u = self.thw_expansion(self.thw_reduction(z)) + z
        u = u.transpose(1, 2).reshape(b, c2, t, h, w)
        return F.relu(x + self.chl_expansion(u))


class TorchSBM(tnn.Module):
    """SBM as docs/METHOD.md §3.2 describes it (replicate padding + a grouped conv3d per sample)."""

    def __init__(self, c, split_pos, k=3, beta=5.0, alpha=0.1):
        super().__init__()
        self.p, self.k, self.beta, self.alpha = split_pos, k, beta, alpha
        self.kernel = tnn.Sequential(tnn.Conv3d(c, k * k, 1), tnn.BatchNorm3d(k * k), tnn.ReLU())
        self.se = tnn.Sequential(tnn.AdaptiveAvgPool3d(1), tnn.Conv3d(c, c // 4, 1), tnn.ReLU(),
                                 tnn.Conv3d(c // 4, c, 1), tnn.Sigmoid())

    def _four(self, x):
        b, c, t, h, w = x.shape
        k, p = self.k, self.p
        former, latter = x[:, :, : p + 1], x[:, :, p + 1:]
        ratio = x[:, :, :, 1:-1, 1:-1].mean((2, 3, 4), keepdim=True) / (x.mean((2, 3, 4), keepdim=True) + 1e-8)
        gate = self.se(x) * (ratio > 1).float()
        fg, lg = F.relu(former * gate), F.relu(latter * gate)
        att = self.kernel(fg).flatten(2).transpose(1, 2)  # (b, N_f, k·k)
        att = F.normalize(F.normalize(att, p=1, dim=2), p=1, dim=1)
        kern = torch.bmm(fg.flatten(2), att).reshape(b, c, 1, k, k)
        padded = F.pad(lg.reshape(b * c, t - p - 1, h, w), [1, 1, 1, 1], mode="replicate").unsqueeze(0)
        resp = F.conv3d(padded, kern, groups=b) / (k * k)  # (1, b, t_l, h, w)
        soft = F.softmax(resp.reshape(b, -1, h * w), dim=-1).reshape(b, 1, -1, h, w)
        r = 1.0 / (soft.clamp_min(1e-4) * h * w)
        fac = torch.where(r < 1, torch.exp(self.beta * (r - 1)), torch.ones_like(r))
        new_l = latter * fac + self.alpha * former.mean((2, 3, 4), keepdim=True)
        new_f = former + self.alpha * ((1 - fac) * latter).mean((2, 3, 4), keepdim=True) / (1 - fac).mean(
            (2, 3, 4), keepdim=True)
        return torch.cat([new_f, new_l], dim=2)

    def forward(self, x):
        b, c, t, h, w = x.shape
        if t == 4:
            return self._four(x)
        halves = x.reshape(b, c, 2, 4, h, w).transpose(1, 2).reshape(b * 2, c, 4, h, w)
        return self._four(halves).reshape(b, 2, c, 4, h, w).transpose(1, 2).reshape(b, c, t, h, w)


class TorchResNet(tnn.Module):
    """A torchvision-named ResNet. video=True: the reference's inflated per-frame network on
    (B, 3, T, H, W) with plug-ins appended to the layer Sequentials after the given blocks, the
    BN-neck `bn`, `classifier` and `projection`. video=False: a 2-D torchvision ResNet with `fc`."""

    def __init__(self, kind, stages, width, *, video=False, bias=False, pool_padding=1, last_stride=2,
                 plugins=None, num_classes=5, idm_positions=None):
        super().__init__()
        plugins = plugins or {}
        if video:
            self.conv1 = tnn.Conv3d(3, width, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=bias)
            self.bn1 = tnn.BatchNorm3d(width)
            self.maxpool = tnn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, pool_padding, pool_padding))
        else:
            self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=bias)
            self.bn1 = tnn.BatchNorm2d(width)
            self.maxpool = tnn.MaxPool2d(3, 2, pool_padding)
        cin = width
        for s, n in enumerate(stages):
            stride = 1 if s == 0 else (last_stride if s == len(stages) - 1 else 2)
            entries = []
            for i in range(n):
                block = TorchBlock(kind, cin, width * 2**s, stride if i == 0 else 1, video, bias)
                cin = block.out_channels
                entries.append(block)
                spec = plugins.get((s + 1, i))
                if spec == "idm":
                    entries.append(TorchIDM(cin, idm_positions))
                elif spec is not None:
                    entries.append(TorchSBM(cin, spec))
            setattr(self, f"layer{s + 1}", tnn.Sequential(*entries))
        self.video = video
        if video:
            self.bn = tnn.BatchNorm1d(cin)
            self.classifier = tnn.Linear(cin, num_classes)
            self.projection = tnn.Conv1d(cin, cin, 1)
        else:
            self.fc = tnn.Linear(cin, num_classes)

    def trunk(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return x

    def forward(self, x):
        x = self.trunk(x)
        if not self.video:
            return self.fc(x.mean((2, 3)))
        frames = x.amax(dim=(3, 4))  # (b, C, t): per-frame global max pooling
        clip_bn = self.bn(frames.mean(-1))
        # The projection input: the BN-neck applied to the frames; with batch statistics in train
        # mode, computed functionally so the running statistics see only the clip call (like ours).
        if self.training:  # no running statistics given: nothing is updated
            frames_bn = F.batch_norm(frames, None, None, self.bn.weight, self.bn.bias, training=True, eps=self.bn.eps)
        else:
            frames_bn = self.bn(frames)
        return {"frame_embeddings": frames.transpose(1, 2), "bn_embedding": clip_bn,
                "logits": self.classifier(clip_bn), "projection": self.projection(frames_bn).transpose(1, 2)}


def _randomise_bn(model, x):
    """Give every BN realistic running statistics (one momentum-1 train pass) and non-trivial affine
    parameters, so eval-mode parity is a real test."""
    gen = torch.Generator().manual_seed(3)
    bns = [m for m in model.modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
        for m in bns:
            m.momentum = 0.1
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    model.eval()


def _record_bn_counts(model):
    """Forward hooks recording n = values per channel each BN sees; returns (counts, remove)."""
    counts, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, tnn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: counts.__setitem__(name, inp[0].numel() // inp[0].shape[1])))
    return counts, lambda: [h.remove() for h in handles]


def _state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _check_running_stats(convert, old_state, new_state, counts, flax_old, flax_new, where):
    """Compare Flax's updated batch_stats with PyTorch's, correcting the variance (see module doc)."""
    count_state = dict(old_state)
    for name, n in counts.items():
        count_state[f"{name}.running_var"] = np.full_like(old_state[f"{name}.running_var"], n)
    n_tree = flax.traverse_util.flatten_dict(convert(count_state)["batch_stats"])
    torch_new = flax.traverse_util.flatten_dict(convert(new_state)["batch_stats"])
    old = flax.traverse_util.flatten_dict(flax.core.unfreeze(flax_old))
    new = flax.traverse_util.flatten_dict(flax.core.unfreeze(flax_new))
    assert set(torch_new) <= set(new), sorted(set(torch_new) - set(new))[:4]
    worst = {"mean": 0.0, "var": 0.0}
    for path, want in torch_new.items():
        got, before = np.asarray(new[path], np.float64), np.asarray(old[path], np.float64)
        if path[-1] == "var":
            n = n_tree[path]
            got = 0.9 * before + (got - 0.9 * before) * n / (n - 1)
        err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-6)
        worst[path[-1]] = max(worst[path[-1]], err)
        assert err <= RTOL, (where, "/".join(path), err)
    print(f"{where} running stats ({len(torch_new)} leaves): worst relative error {worst}")


# ---------------------------------------------------------------------------------------------
# torchvision ResNet-18 layout through convert_torchvision_resnet


def test_torchvision_resnet18_parity():
    torch.manual_seed(0)
    tmodel = TorchResNet("basic", (2, 2, 2, 2), 8, num_classes=5)
    x = torch.randn(2, 3, 64, 32)
    _randomise_bn(tmodel, x)
    state0 = _state(tmodel)
    net = resnet.resnet(18, width=8, include_fc=True, num_fc_classes=5, last_stride=2)
    variables = tv.convert_torchvision_resnet(state0, include_fc=True)
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    with torch.no_grad():
        want = tmodel(x).numpy()
    _close("resnet18 eval logits", jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, xj), want)

    counts, remove = _record_bn_counts(tmodel)
    tmodel.train()
    with torch.no_grad():
        want = tmodel(x).numpy()
    remove()
    got, new_vars = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, xj)
    _close("resnet18 train logits", got, want)
    _check_running_stats(lambda s: tv.convert_torchvision_resnet(s, include_fc=True), state0, _state(tmodel),
                         counts, variables["batch_stats"], new_vars["batch_stats"], "resnet18")


# ---------------------------------------------------------------------------------------------
# The reference's SINet through convert_baseline_checkpoint

SHAPE = (4, 4, 80, 48, 3)  # layer2 10×6 (IDM N = 4·10·6 = 240), layer3 5×3; B = 4 clips for the BN-neck
BACKBONE = {"depth": 50, "width": 8, "last_stride": 1, "stem_pool_padding": 0, "conv_bias": True}


@pytest.fixture(scope="module")
def sinet_pair():
    torch.manual_seed(1)
    plugins = {pos: ("idm" if kind == "idm" else kw["split_pos"]) for pos, (kind, kw) in sinet.PLUGINS["sinet"].items()}
    tmodel = TorchResNet("bottleneck", (3, 4, 6, 3), 8, video=True, bias=True, pool_padding=0, last_stride=1,
                         plugins=plugins, num_classes=5, idm_positions=4 * 10 * 6)
    video = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    x = torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())  # (B, 3, T, H, W)
    _randomise_bn(tmodel, x)
    # The reference runs in float64: SBM's softmax over large responses followed by exp(5(r − 1))
    # can be ill-conditioned; in one setting (B = 2 clips) PyTorch's own float32 output of the
    # second SBM was 3e-4 (relative) away from float64, ours 3e-5. A float32 copy is kept to
    # measure PyTorch's own float32 error where conditioning matters (train mode).
    tmodel32 = copy.deepcopy(tmodel)
    tmodel.double()
    model = reid.ReIDNet(num_classes=5, backbone=BACKBONE, arch="sinet", infonce_projection=True, disc_hidden=8)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(SHAPE), train=False))
    return types.SimpleNamespace(torch64=tmodel, x64=x.double(), torch32=tmodel32, x32=x, model=model, shapes=shapes,
                                 video=jnp.asarray(video))


def _to_flax_variables(state, shapes):
    """Converted checkpoint + zeros for what it lacks (the discriminators), checked strictly."""
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), flax.core.unfreeze(shapes))
    params, stats = baseline.load_baseline_checkpoint(state, zeros["params"], zeros["batch_stats"])
    return {"params": params, "batch_stats": stats}


def test_sinet_checkpoint_file_round_trip(sinet_pair, tmp_path):
    """A .pth.tar like the authors' (state_dict under 'state_dict', a DataParallel prefix, a numpy
    scalar) reads back to the same arrays."""
    tmodel = sinet_pair.torch32
    state = {f"module.{k}": v for k, v in tmodel.state_dict().items()}
    path = str(tmp_path / "best_model.pth.tar")
    torch.save({"state_dict": state, "rank1": np.float64(0.42), "epoch": 149}, path)
    try:
        loaded = baseline.read_baseline_checkpoint(path)
    except ValueError as e:  # torch refuses the numpy scalar under weights_only=True
        assert "allow_pickle" in str(e)
        loaded = baseline.read_baseline_checkpoint(path, allow_pickle=True)
    assert set(loaded) == set(tmodel.state_dict())
    np.testing.assert_array_equal(loaded["layer2.2.thw_reduction.0.weight"],
                                  tmodel.state_dict()["layer2.2.thw_reduction.0.weight"].numpy())
    assert baseline.infer_arch(loaded) == "sinet"


def test_sinet_eval_parity(sinet_pair):
    p = sinet_pair
    tmodel, x, model, shapes, video = p.torch64, p.x64, p.model, p.shapes, p.video
    variables = _to_flax_variables(_state(tmodel), shapes)
    tmodel.eval()
    with torch.no_grad():
        want = {k: v.numpy() for k, v in tmodel(x).items()}
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, video)
    for key in ("frame_embeddings", "bn_embedding", "logits", "projection"):
        _close(f"sinet eval {key}", got[key], want[key])


def test_sinet_train_parity(sinet_pair):
    """One train-mode forward: outputs with batch statistics and every running statistic (backbone,
    IDM, SBM and BN-neck BatchNorms).

    Normalising by the statistics of a few clips (the BN-neck sees B = 4 values per channel) is
    ill-conditioned, so PyTorch's own float32 result is up to ~4e-4 away from its float64 one for
    the BN-neck output. Outputs after the BN-neck must be within max(1e-4, 3 × that float32 error).
    """
    p = sinet_pair
    tmodel, x, model, shapes, video, tmodel32, x32 = p.torch64, p.x64, p.model, p.shapes, p.video, p.torch32, p.x32
    tmodel32.train()
    with torch.no_grad():
        want32 = {k: v.numpy() for k, v in tmodel32(x32).items()}
    tmodel32.eval()
    state0 = _state(tmodel)
    variables = _to_flax_variables(state0, shapes)
    counts, remove = _record_bn_counts(tmodel)
    tmodel.train()
    try:
        with torch.no_grad():
            want = {k: v.numpy() for k, v in tmodel(x).items()}
        state1 = _state(tmodel)
    finally:
        remove()
        tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in state0.items()})
        tmodel.eval()
    got, new_vars = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                                                     mutable=["batch_stats"]))(variables, video)
    _close("sinet train frame_embeddings", got["frame_embeddings"], want["frame_embeddings"])
    for key in ("bn_embedding", "logits", "projection"):
        torch32 = _close(f"(torch float32) sinet train {key}", want32[key], want[key], rtol=1.0)
        _close(f"sinet train {key}", got[key], want[key], rtol=max(RTOL, 3 * torch32))
    assert any("thw_reduction" in k for k in counts) and any("kernel.1" in k for k in counts)
    _check_running_stats(baseline.convert_baseline_checkpoint, state0, state1, counts,
                         variables["batch_stats"], new_vars["batch_stats"], "sinet")


def test_sbm_eight_frames_parity():
    """SBM on T = 8 runs as two 4-frame halves, in train mode (BN batch statistics over both)."""
    torch.manual_seed(2)
    c, h, w = 32, 5, 4
    tsbm = TorchSBM(c, split_pos=1).train()
    x = torch.relu(torch.randn(2, c, 8, h, w))
    with torch.no_grad():
        want = tsbm(x).numpy()
    sd = {f"layer3.2.{k}": v for k, v in _state(tsbm).items()}
    sd.update({"layer3.0.conv1.weight": np.zeros((1, 1, 1, 1, 1), np.float32)})  # a block before it
    converted = baseline.convert_baseline_checkpoint(sd)
    params = converted["params"]["backbone"]["layer3_0_sbm"]
    stats = converted["batch_stats"]["backbone"]["layer3_0_sbm"]
    module = sinet.SBM(seq_len=8, split_pos=1)
    xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1).reshape(16, h, w, c))
    got, _ = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
        {"params": params, "batch_stats": stats}, xj)
    _close("sbm T=8 train", np.asarray(got).reshape(2, 8, h, w, c).transpose(0, 4, 1, 2, 3), want)


# ---------------------------------------------------------------------------------------------
# MS-TCN


class TorchStage(tnn.Module):
    def __init__(self, din, f, k, layers, p):
        super().__init__()
        self.conv_1x1 = tnn.Conv1d(din, f, 1)
        self.layers = tnn.ModuleList()
        for i in range(layers):
            layer = tnn.Module()
            layer.conv_dilated = tnn.Conv1d(f, f, 3, padding=2**i, dilation=2**i)
            layer.conv_1x1 = tnn.Conv1d(f, f, 1)
            self.layers.append(layer)
        self.conv_out = tnn.Conv1d(f, k, 1)
        self.p = p

    def forward(self, x):
        x = self.conv_1x1(x)
        for layer in self.layers:
            y = layer.conv_1x1(F.relu(layer.conv_dilated(x)))
            x = x + F.dropout(y, self.p, self.training)
        return x


class TorchMSTCN(tnn.Module):
    """The reference's MultiStageModel trunk (docs/METHOD.md §3.6), on (B, D, T)."""

    def __init__(self, din, k, stages=4, layers=10, f=64, p=0.5):
        super().__init__()
        self.stage1 = TorchStage(din, f, k, layers, p)
        self.stages = tnn.ModuleList([TorchStage(k, f, k, layers, p) for _ in range(stages - 1)])
        self.bn = tnn.BatchNorm1d(f)

    def forward(self, x):
        logits, feats, seqs = [], [], []
        for stage in [self.stage1, *self.stages]:
            f = stage(x)
            out = stage.conv_out(f)
            feats.append(f.transpose(1, 2))
            logits.append(out.transpose(1, 2))
            seqs.append(self.bn(f.mean(-1)))
            x = F.softmax(out, dim=1)
        return {"logits": torch.stack(logits), "features": torch.stack(feats), "sequence_features": torch.stack(seqs)}


def test_mstcn_parity():
    torch.manual_seed(4)
    d, k = 48, 7
    tmodel = TorchMSTCN(d, k, p=0.0)  # no dropout, so train mode is deterministic
    x = torch.randn(3, d, 4)
    _randomise_bn(tmodel, x)
    state0 = _state(tmodel)
    converted = baseline.convert_baseline_temporal(state0)["temporal"]
    model = MultiStageTCN(num_classes=k, dropout_rate=0.0)
    xj = jnp.asarray(x.numpy().transpose(0, 2, 1))
    with torch.no_grad():
        want = {key: v.numpy() for key, v in tmodel(x).items()}
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(converted, xj)
    for key in want:
        _close(f"mstcn eval {key}", got[key], want[key])

    counts, remove = _record_bn_counts(tmodel)
    tmodel.train()
    with torch.no_grad():
        want = {key: v.numpy() for key, v in tmodel(x).items()}
    remove()
    got, new_vars = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(converted, xj)
    for key in want:
        _close(f"mstcn train {key}", got[key], want[key])
    # The shared BN is updated once per stage (4 times) in both; n = B for each call.
    _check_running_stats(lambda s: baseline.convert_baseline_temporal(s)["temporal"], state0, _state(tmodel),
                         counts, converted["batch_stats"], new_vars["batch_stats"], "mstcn")


@pytest.mark.parametrize("projection", [False, True])
def test_bnneck_torch_stats_match_torch_batchnorm1d_called_as_the_authors_forward(projection):
    """`bnneck_torch_stats`: the running statistics after one train-mode forward equal a torch
    BatchNorm1d (momentum 0.1) called as the authors' forward calls its `self.bn`: on the frames
    [B, D, T] (`mid`), on the clips [B, D], and with InfoNCE on the frames again."""
    shape = (4, 4, 32, 16, 3)
    model = reid.ReIDNet(num_classes=5, backbone={"depth": "tiny"}, disc_hidden=8, infonce_projection=projection,
                         bnneck_torch_stats=True)
    params, batch_stats = reid.init_model(model, jax.random.key(0), shape)
    d = params["bnneck"]["scale"].shape[0]
    rng = np.random.default_rng(3)
    start_mean, start_var = rng.normal(size=d).astype(np.float32), rng.uniform(0.5, 2.0, size=d).astype(np.float32)
    batch_stats = {**batch_stats, "bnneck": {"mean": jnp.asarray(start_mean), "var": jnp.asarray(start_var)}}
    video = jnp.asarray(rng.normal(size=shape), jnp.float32)
    out, new = jax.jit(lambda v: model.apply(v, video, train=True, rngs={"dropout": jax.random.key(1)},
                                             mutable=["batch_stats"]))({"params": params, "batch_stats": batch_stats})
    bn = torch.nn.BatchNorm1d(d, momentum=0.1).double().train()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(start_mean.astype(np.float64)))
        bn.running_var.copy_(torch.from_numpy(start_var.astype(np.float64)))
        x = torch.from_numpy(np.asarray(out["frame_embeddings"], np.float64).transpose(0, 2, 1))  # (b, c, t)
        bn(x)  # mid = self.bn(x)
        bn(x.mean(-1))  # f = self.bn(v)
        if projection:
            bn(x)  # x = self.bn(x) before the projection
    np.testing.assert_allclose(new["batch_stats"]["bnneck"]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["bnneck"]["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
