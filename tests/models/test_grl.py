"""Gradient reversal (custom_vjp) and the DANN β schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from svreid_jax.models.discriminators import DomainDiscriminator
from svreid_jax.models.grl import gradient_reversal, grl_beta

X = np.arange(12, dtype=np.float32).reshape(4, 3) / 7.0 - 0.5
G = np.linspace(-2.0, 3.0, 12, dtype=np.float32).reshape(4, 3)


def _vjp(x, beta, g):
    y, pull = jax.vjp(lambda a: gradient_reversal(a, beta), x)
    return y, pull(g)[0]


def test_forward_is_identity():
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.asarray(X, dtype)
        y = gradient_reversal(x, 0.7)
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.7, 1.0])
def test_backward_eager(beta):
    y, dx = _vjp(jnp.asarray(X), beta, jnp.asarray(G))
    np.testing.assert_array_equal(np.asarray(y), X)
    np.testing.assert_array_equal(np.asarray(dx), -np.float32(beta) * G)


def test_backward_under_jit_with_traced_beta():
    f = jax.jit(lambda x, b, g: _vjp(x, b, g)[1])
    for beta in (0.0, 0.245, 0.9):
        dx = f(jnp.asarray(X), jnp.float32(beta), jnp.asarray(G))
        np.testing.assert_array_equal(np.asarray(dx), -np.float32(beta) * G)
    assert f._cache_size() == 1  # one compilation for every β


def test_beta_gets_zero_gradient_and_dtype_is_kept():
    g_beta = jax.grad(lambda b: jnp.sum(gradient_reversal(jnp.asarray(X), b) * G))(0.5)
    assert float(g_beta) == 0.0
    _, dx = _vjp(jnp.asarray(X, jnp.bfloat16), 0.5, jnp.asarray(G, jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16
    # Integer β is accepted and treated as a float coefficient.
    np.testing.assert_array_equal(np.asarray(_vjp(jnp.asarray(X), 1, jnp.asarray(G))[1]), -G)


def test_backward_under_jit_with_named_sharding():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    batch, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    def grad_fn(x, beta):
        return jax.grad(lambda a: jnp.sum(gradient_reversal(a, beta) * jnp.asarray(G)))(x)

    f = jax.jit(grad_fn, in_shardings=(batch, repl), out_shardings=batch)
    x = jax.device_put(jnp.asarray(X), batch)
    for beta in (0.3, 1.0):
        dx = f(x, jax.device_put(jnp.float32(beta), repl))
        np.testing.assert_array_equal(np.asarray(dx), -np.float32(beta) * G)


def test_grl_beta_schedule():
    for step, want in ((1000, 0.245), (2000, 0.462), (5000, 0.848), (7500, 0.954), (10000, 0.987)):
        assert grl_beta(step, 20000) == pytest.approx(want, abs=1e-3)
    assert grl_beta(0, 20000) == 0.0 and isinstance(grl_beta(10, 100), float)
    steps = jnp.array([0, 1000, 2000, 5000], jnp.int32)
    got = jax.jit(grl_beta)(steps, 20000)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), [0.0, 0.2449, 0.4621, 0.8483], atol=1e-4)
    np.testing.assert_allclose(float(grl_beta(jnp.int32(2000), 20000)), grl_beta(2000, 20000), rtol=1e-6)


def test_discriminator_reverses_gradient_on_any_leading_dims():
    disc = DomainDiscriminator(hidden=8, dropout=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    params = disc.init(jax.random.key(0), x, beta=0.0, train=False)
    assert disc.apply(params, x, beta=0.0, train=False).shape == (2, 3, 2)
    assert disc.apply(params, x[0], beta=0.0, train=False).shape == (3, 2)

    def loss(x, beta):
        out = disc.apply(params, x, beta=beta, train=True, rngs={"dropout": jax.random.key(3)})
        return jnp.sum(out[..., 0] - 2.0 * out[..., 1])

    natural = jax.grad(loss)(x, -1.0)  # β = −1 is the plain (un-reversed) gradient
    assert float(jnp.abs(natural).sum()) > 0
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(x, 0.6)), -0.6 * np.asarray(natural), rtol=1e-6)
