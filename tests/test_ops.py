"""Bitwise pins of every place that L2-normalises, centres by camera or takes batch-norm moments.

Each oracle below is the formula a call site computed before these operations were given one home,
written out as plain numpy / jnp. A call site must reproduce its oracle bit for bit
(np.testing.assert_array_equal), eagerly and under jit, because the demo run's results.json is
compared byte for byte and the last bit of a normalised feature can flip a DBSCAN neighbour or a rank.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from svreid_jax import losses, ops
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import diagnostics, protocols, ranking
from svreid_jax.models import reid
from svreid_jax.models import resnet as resnet_lib
from svreid_jax.variants import plus

EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Inputs: several cameras of unequal size, a camera with a single row, zero rows.

def _features(dtype=np.float32, n=13, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * 3.0 + rng.normal(size=(1, d))).astype(dtype)
    x[0] = 0.0  # the single row of camera 7: centring keeps it, so it stays a zero row
    x[4] = 0.0  # a zero row inside a camera of several
    return x


CAMS = np.array([7, 0, 0, 0, 0, 0, 3, 3, 3, 3, 2, 2, 2], np.int64)


# ---------------------------------------------------------------------------------------------
# Oracles: the formulas as the call sites wrote them.

def _oracle_l2_gradient_safe(x):  # losses: zero rows map to zero with a zero gradient
    nonzero = jnp.any(x != 0, axis=-1, keepdims=True)
    ones_there = jnp.where(nonzero, x, jnp.ones_like(x))
    return jnp.where(nonzero, ones_there / jnp.maximum(jnp.linalg.norm(ones_there, axis=-1, keepdims=True), EPS), 0.0)


def _oracle_l2_jnp(x):  # ranking's cosine distance, diagnostics' teacher clusters
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), EPS)


def _oracle_l2_numpy(x):  # plus (float32) and the PCA plot (float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def _oracle_centre_by_group(x, groups):  # adaptation.camera_centred, inside the jitted step
    same = (groups[:, None] == groups[None, :]).astype(x.dtype)
    count = jnp.sum(same, axis=1, keepdims=True)
    return _oracle_l2_gradient_safe(jnp.where(count > 1, x - (same @ x) / count, x))


def _oracle_test_time_centred(x, camids):  # eval.camera_normalise: float64 means, no normalisation
    x = np.asarray(x, np.float64)
    camids = np.asarray(camids).reshape(-1)
    out = x.copy()
    for c in np.unique(camids):
        rows = camids == c
        out[rows] -= x[rows].mean(0)
    return out.astype(np.float32)


def _oracle_plus_centred(features, camids):  # plus.camera_normalise: float32, normalised on both sides
    f = _oracle_l2_numpy(np.asarray(features, np.float32))
    out = f.copy()
    for cam in np.unique(camids):
        rows = camids == cam
        out[rows] = f[rows] - f[rows].mean(axis=0)
    return _oracle_l2_numpy(out)


def _oracle_flat_moments(x, axis_name):  # the BN-neck's running statistics (torch_stats)
    x = x.reshape(-1, x.shape[-1])
    mean = jnp.mean(x, axis=0)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(x - mean), axis=0)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return mean, var


def _oracle_frame_bn(frames, scale, bias, axis_name):  # the frames' BN for InfoNCE and reference's `mid`
    mean = jnp.mean(frames, axis=(0, 1))
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(frames - mean), axis=(0, 1))
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return (frames - mean) * jax.lax.rsqrt(var + resnet_lib.BN_EPSILON) * scale + bias


def _same(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_array_equal(g, w)


def _both_modes(fn, oracle, *args):
    """fn(*args) == oracle(*args) eagerly and with each side jitted on its own."""
    _same(fn(*args), oracle(*args))
    _same(jax.jit(fn)(*args), jax.jit(oracle)(*args))


# ---------------------------------------------------------------------------------------------
# The call sites' expressions: which options each one passes. The tests further down that go
# through a module's own function (plus.cluster_features, ReIDNet, ...) check that it really
# computes this.

def _losses_l2(x):  # every normalisation in losses.py
    return ops.l2_normalise(x, zero_safe=True)


def _losses_centre(x, groups):  # losses.teacher_consistency, diagnostics.teacher_clusters
    return ops.camera_centred(x, groups, keep_singletons=True, normalise_after=True)


def _test_time_centred(x, camids):  # protocols.camera_normalised
    return ops.camera_centred(x, camids, dtype=np.float64)


def _plus_centred(f, camids):  # plus.cluster_features
    return ops.camera_centred(f, camids, dtype=np.float32, normalise_before=True, normalise_after=True)


def _plus_l2(f):  # plus's memory fills and features; visualize's PCA input (float64)
    return ops.l2_normalise(f)


def _flat_moments(x, axis_name):  # reid.BNNeck's running statistics
    return ops.batch_moments(x, axis_name, flatten=True)


def _model_frame_bn(frames, scale, bias, axis_name):  # ReIDNet's InfoNCE input, train mode
    return reid.frame_batch_norm(frames, scale, bias, axis_name, statistics=None)


def _reference_frame_bn(frames, scale, bias, axis_name):  # reference's `mid`
    return reid.frame_batch_norm(frames, scale, bias, axis_name)


# ---------------------------------------------------------------------------------------------
# L2 normalisation

def test_losses_normalisation_values_and_gradients():
    x = jnp.asarray(_features())
    _both_modes(_losses_l2, _oracle_l2_gradient_safe, x)
    cube = lambda f: lambda v: jnp.sum(f(v) ** 3)  # noqa: E731
    _both_modes(jax.grad(cube(_losses_l2)), jax.grad(cube(_oracle_l2_gradient_safe)), x)
    assert np.all(np.isfinite(np.asarray(jax.grad(cube(_losses_l2))(x))))


def test_losses_cosine_distances():
    x = jnp.asarray(_features())
    _both_modes(lambda v: losses.pairwise_distances(v, "cosine"),
                lambda v: -_oracle_l2_gradient_safe(v) @ _oracle_l2_gradient_safe(v).T, x)


def test_ranking_cosine_distances():
    x = _features(n=13)
    q, g = jnp.asarray(x[:5]), jnp.asarray(x[5:])
    oracle = jax.jit(lambda a, b: -jnp.matmul(_oracle_l2_jnp(a), _oracle_l2_jnp(b).T,
                                              precision=jax.lax.Precision.HIGHEST))
    _same(ranking.pairwise_distance(q, g, "cosine"), oracle(q, g))
    _same(ranking.pairwise_distance(q, g, "cosine", chunk_size=2), jnp.concatenate(
        [oracle(q[s:s + 2], g) for s in range(0, 5, 2)]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plus_and_plot_normalisation(dtype):
    f = _features(dtype)
    _same(_plus_l2(f), _oracle_l2_numpy(f))


def test_plus_memory_fill():
    f = _features()
    labels = np.array([0, 1, 1, -1, 0, 2, 2, 2, -1, 1, 0, 3, 3], np.int32)
    new_labels, memory, valid = plus.fill_memory(f, labels, capacity=6)
    want = np.zeros((6, f.shape[1]), np.float32)
    fn = _oracle_l2_numpy(f)
    np.add.at(want, new_labels[new_labels >= 0], fn[new_labels >= 0])
    _same(memory, _oracle_l2_numpy(want).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Camera centring

def test_adaptation_centring_values_and_gradients():
    x, groups = jnp.asarray(_features()), jnp.asarray(CAMS)
    _both_modes(_losses_centre, _oracle_centre_by_group, x, groups)
    cube = lambda f: lambda v, g: jnp.sum(f(v, g) ** 3)  # noqa: E731
    _both_modes(jax.grad(cube(_losses_centre)), jax.grad(cube(_oracle_centre_by_group)), x, groups)


def test_adaptation_centring_in_the_consistency_terms():
    x, groups = jnp.asarray(_features()), jnp.asarray(CAMS)
    key = jax.random.PRNGKey(3)
    got = losses.teacher_consistency(key, x * 1.5, x, num_clusters=3, groups=groups)
    s, t = _oracle_centre_by_group(x * 1.5, groups), _oracle_centre_by_group(x, groups)
    centroids, _ = losses.clustering.kmeans(key, t, 3, 10)
    directions = _oracle_l2_gradient_safe(centroids)
    assign = jnp.argmax(t @ directions.T, axis=-1)
    want_ce = losses.cross_entropy((s @ directions.T) / 0.1, assign)
    want_dist = jnp.mean(jnp.sqrt(jnp.sum((s - centroids[assign]) ** 2, axis=-1) + 1e-12))
    _same((got["consistency_ce"], got["consistency_dist"]), (want_ce, want_dist))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_test_time_centring(dtype):
    x = _features(dtype)
    _same(_test_time_centred(x, CAMS), _oracle_test_time_centred(x, CAMS))
    _same(_test_time_centred(x, CAMS[:, None]), _oracle_test_time_centred(x, CAMS))


def test_test_time_centring_through_the_protocol():
    x = _features()
    query = [Tracklet(frames=(f"/x/q{i}.jpg",), pid=i, camid=int(c)) for i, c in enumerate(CAMS[:4])]
    gallery = [Tracklet(frames=(f"/x/g{i}.jpg",), pid=i, camid=int(c)) for i, c in enumerate(CAMS[4:])]
    want = _oracle_test_time_centred(x, CAMS)
    _same(protocols.camera_normalised(x[:4], x[4:], query, gallery), (want[:4], want[4:]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plus_centring(dtype):
    f = _features(dtype)
    _same(_plus_centred(f, CAMS), _oracle_plus_centred(f, CAMS))


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("singletons", [False, True])
def test_numpy_and_jax_centring_are_one_operation(before, after, singletons):
    """The two branches differ in how the means are summed, not in what they compute."""
    x = _features()
    x[0] = [1.0, -2.0, 0.5, 0.0, 3.0, 1.0]  # camera 7's only row, not zero here
    kw = dict(normalise_before=before, normalise_after=after, keep_singletons=singletons)
    on_host = ops.camera_centred(x, CAMS, dtype=np.float64, **kw)
    on_device = np.asarray(ops.camera_centred(jnp.asarray(x), jnp.asarray(CAMS), **kw))
    assert on_host.dtype == on_device.dtype == np.float32
    np.testing.assert_allclose(on_device, on_host, rtol=1e-5, atol=1e-5)
    lone = x[0] / np.linalg.norm(x[0]) if before or after else x[0]
    np.testing.assert_allclose(on_host[0], lone if singletons else 0.0, rtol=1e-6)
    for cam in (0, 2, 3):
        rows = on_host[CAMS == cam]
        if after:
            np.testing.assert_allclose(np.linalg.norm(rows[np.any(rows != 0, axis=1)], axis=1), 1.0, rtol=1e-5)
        else:
            np.testing.assert_allclose(rows.mean(0), 0.0, atol=1e-5)


def test_numpy_has_no_gradient_safe_normalisation():
    with pytest.raises(ValueError, match="zero_safe"):
        ops.l2_normalise(np.ones((2, 3)), zero_safe=True)


def _recording(monkeypatch, module, name, position=0):
    """Replace module.name by a pass-through that keeps its positional argument `position` of every call."""
    seen, real = [], getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(args[position])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.parametrize("camera_normalise", [True, False])
def test_plus_clustering_input(monkeypatch, camera_normalise):
    c = demo.get_config("plus")
    c.plus.camera_normalise = camera_normalise
    f = _features(n=24, seed=2)
    cams = np.arange(24) % 5
    cams[0] = 9  # a camera with one tracklet
    seen = _recording(monkeypatch, plus.kreciprocal, "jaccard_graph")
    plus.cluster_features(c, f, cams, epoch=0)
    want = _oracle_plus_centred(f, cams) if camera_normalise else _oracle_l2_numpy(np.asarray(f, np.float32))
    _same(seen[0], want)


@pytest.mark.parametrize("camera_centred", [True, False])
def test_teacher_cluster_diagnostic(monkeypatch, camera_centred):
    class Cfg:  # the fields teacher_clusters reads
        class batch:
            target_size = 9

        class adaptation:
            kmeans_clusters = 3
            kmeans_iters = 5

    Cfg.adaptation.camera_centred = camera_centred
    x, pids, cams = _features(n=20, seed=4), np.arange(20) % 5, np.arange(20) % 4
    seen = _recording(monkeypatch, diagnostics.clustering, "kmeans", position=1)
    diagnostics.teacher_clusters(Cfg, x, pids, cams, num_batches=3, seed=1)
    rng = np.random.default_rng(1)
    for k in range(3):
        rows = rng.choice(20, size=9, replace=False)
        v = jnp.asarray(x[rows])
        if camera_centred:
            v = _oracle_centre_by_group(v, jnp.asarray(cams[rows]))
        _same(seen[k], _oracle_l2_jnp(v))


# ---------------------------------------------------------------------------------------------
# Batch-norm moments. (4, 4, 8) is a shape whose sums XLA:CPU orders differently for x[B, T, D]
# reduced over axes (0, 1) and for x.reshape(-1, D) reduced over axis 0.

SHAPES = [(4, 4, 8), (6, 4, 128), (3, 5, 7)]


def _frames(shape, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape).astype(np.float32) * 2.0 + 0.5)


@pytest.mark.parametrize("shape", SHAPES + [(12, 16)])
def test_running_statistics_moments(shape):
    x = _frames(shape)
    _both_modes(lambda v: _flat_moments(v, None), lambda v: _oracle_flat_moments(v, None), x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("site", [_model_frame_bn, _reference_frame_bn])
def test_frame_batch_norm(site, shape):
    frames = _frames(shape)
    rng = np.random.default_rng(1)
    scale = jnp.asarray(1.0 + 0.1 * rng.normal(size=shape[-1]), jnp.float32)
    bias = jnp.asarray(0.1 * rng.normal(size=shape[-1]), jnp.float32)
    _both_modes(lambda f: site(f, scale, bias, None), lambda f: _oracle_frame_bn(f, scale, bias, None), frames)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_moments_across_devices(shape):
    """The axis_name path (sync BN), with jax.vmap standing in for pmap over 2 devices."""
    x = jnp.stack([_frames(shape, 0), _frames(shape, 1)])
    scale, bias = jnp.full((shape[-1],), 1.5, jnp.float32), jnp.full((shape[-1],), 0.25, jnp.float32)

    def spread(fn):
        return jax.vmap(fn, axis_name="batch")

    _both_modes(spread(lambda v: _flat_moments(v, "batch")), spread(lambda v: _oracle_flat_moments(v, "batch")), x)
    for site in (_model_frame_bn, _reference_frame_bn):
        _both_modes(spread(lambda f: site(f, scale, bias, "batch")),
                    spread(lambda f: _oracle_frame_bn(f, scale, bias, "batch")), x)


# ---------------------------------------------------------------------------------------------
# Batch norm inside the model, eagerly: what the InfoNCE projection receives, and the BN-neck's
# running statistics under torch_stats (three calls: frames, clips, frames).

@pytest.fixture(scope="module")
def tiny_model():
    model = reid.ReIDNet(num_classes=5, backbone={"depth": "tiny"}, disc_hidden=16, infonce_projection=True,
                         bnneck_torch_stats=True)
    shape = (2, 4, 32, 16, 3)
    params, batch_stats = reid.init_model(model, jax.random.key(0), shape)
    rng = np.random.default_rng(5)
    d = params["bnneck"]["scale"].shape[0]
    batch_stats = {**batch_stats, "bnneck": {"mean": jnp.asarray(rng.normal(size=d), jnp.float32),
                                             "var": jnp.asarray(rng.uniform(0.5, 2.0, size=d), jnp.float32)}}
    video = jnp.asarray(rng.normal(size=shape), jnp.float32)
    return model, {"params": params, "batch_stats": batch_stats}, video


@pytest.mark.parametrize("train", [True, False])
def test_model_frame_batch_norm(tiny_model, train):
    model, variables, video = tiny_model
    seen = []

    def spy(next_fun, args, kwargs, context):
        if context.module.name == "projection" and context.method_name == "__call__":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        out, _ = model.apply(variables, video, train=train, rngs={"dropout": jax.random.key(1)},
                             mutable=["batch_stats"])
    bn = variables["params"]["bnneck"]
    if train:
        want = _oracle_frame_bn(out["frame_embeddings"], bn["scale"], bn["bias"], None)
    else:
        running = variables["batch_stats"]["bnneck"]
        want = ((out["frame_embeddings"] - running["mean"]) * jax.lax.rsqrt(running["var"] + resnet_lib.BN_EPSILON)
                * bn["scale"] + bn["bias"])
    _same(seen[0], want)


def _oracle_torch_running_stats(mean, var, batches, axis_name, devices=1):
    for batch in batches:
        mu, sigma2 = _oracle_flat_moments(batch, axis_name)
        n = batch.size // batch.shape[-1] * devices
        mean = 0.9 * mean + (1 - 0.9) * mu
        var = 0.9 * var + (1 - 0.9) * sigma2 * (n / max(n - 1, 1))
    return {"mean": mean, "var": var}


def test_model_running_statistics(tiny_model):
    model, variables, video = tiny_model
    out, new = model.apply(variables, video, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
    old = variables["batch_stats"]["bnneck"]
    frames, clips = out["frame_embeddings"], out["clip_embedding"]
    _same(new["batch_stats"]["bnneck"],
          _oracle_torch_running_stats(old["mean"], old["var"], (frames, clips, frames), None))


def test_bnneck_running_statistics_across_devices():
    """BNNeck alone under jax.vmap with its axis_name: the moments and the unbiased count span both."""
    neck = reid.BNNeck(torch_stats=True, use_running_average=False, momentum=0.9, epsilon=resnet_lib.BN_EPSILON,
                       use_fast_variance=False, axis_name="batch")
    frames = jnp.stack([_frames((2, 4, 8), 0), _frames((2, 4, 8), 1)])
    clips = frames.mean(axis=2)
    start = {"mean": jnp.full((8,), 0.3, jnp.float32), "var": jnp.full((8,), 2.0, jnp.float32)}
    params = {"scale": jnp.ones((8,), jnp.float32), "bias": jnp.zeros((8,), jnp.float32)}

    def one(x, f):
        _, new = neck.apply({"params": params, "batch_stats": start}, x, frames=f, frame_calls=2,
                            mutable=["batch_stats"])
        return new["batch_stats"]

    got = jax.vmap(one, axis_name="batch")(clips, frames)
    want = jax.vmap(lambda x, f: _oracle_torch_running_stats(start["mean"], start["var"], (f, x, f), "batch",
                                                             devices=2), axis_name="batch")(clips, frames)
    _same(got, want)
