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

from svreid_jax import losses
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import diagnostics, protocols, ranking
from svreid_jax.models import reid
from svreid_jax.models import resnet as resnet_lib
from svreid_jax.variants import plus, reference

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
# The call sites as they compute now.

def _losses_l2(x):
    return losses._l2_normalize(x)


def _losses_centre(x, groups):
    return losses.centre_by_group(x, groups)


def _test_time_centred(x, camids):
    return protocols.camera_centred(x, camids)


def _plus_centred(f, camids):
    return plus.camera_centred(f, camids)


def _plus_l2(f):
    return plus._normalise(f)


def _flat_moments(x, axis_name):
    mean, var, _ = reid._moments(x, axis_name)
    return mean, var


def _model_frame_bn(frames, scale, bias, axis_name):
    bn = nn.BatchNorm(use_running_average=False).bind(
        {"params": {"scale": scale, "bias": bias},
         "batch_stats": {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}})
    return reid._frame_batch_norm(bn, frames, train=True, axis_name=axis_name)


def _reference_frame_bn(frames, scale, bias, axis_name):
    return reference.frame_batch_norm(frames, scale, bias, axis_name)


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


def test_teacher_cluster_diagnostic():
    class Cfg:  # the fields teacher_clusters reads
        class batch:
            target_size = 9

        class adaptation:
            camera_centred = True
            kmeans_clusters = 3
            kmeans_iters = 5

    x, pids = _features(n=20, seed=4), np.arange(20) % 5
    cams = np.arange(20) % 3
    got = diagnostics.teacher_clusters(Cfg, x, pids, cams, num_batches=3, seed=1)
    rng, scores = np.random.default_rng(1), []
    for k in range(3):
        rows = rng.choice(20, size=9, replace=False)
        v = _oracle_l2_jnp(_oracle_centre_by_group(jnp.asarray(x[rows]), jnp.asarray(cams[rows])))
        _, assign = losses.clustering.kmeans(jax.random.PRNGKey(1000 + k), v, 3, 5)
        scores.append(diagnostics.cluster_agreement(np.asarray(assign), pids[rows]))
    assert got == {key: float(np.mean([s[key] for s in scores])) for key in ("nmi", "purity")}


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
    assert reid._moments(x[0], None)[2] == shape[0] * shape[1]
    counts = jax.vmap(lambda v: jnp.asarray(reid._moments(v, "batch")[2]), axis_name="batch")(x)
    np.testing.assert_array_equal(counts, [2 * shape[0] * shape[1]] * 2)
