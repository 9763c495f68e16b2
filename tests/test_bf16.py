"""bfloat16 backbone vs float32: the full paper-variant step gives the same losses (demo-sized tiny model).

`model.dtype='bfloat16'` runs the ResNet in bf16 (parameters, pooled embeddings, heads, losses and the
optimiser stay float32). Same initial parameters, same fixed random batches, same RNG: after each of a
few steps every loss term must agree with the float32 run within RTOL relative to
max(|f32 value|, FLOOR) (terms near 0, e.g. the triplet hinge, are compared on the FLOOR scale), and
nothing may be NaN or skipped.
"""
import jax
import numpy as np
import pytest

from configs import demo
from svreid_jax import variants
from svreid_jax.models import reid
from svreid_jax.state import create_train_state
from svreid_jax.builders import create_model

B, T, H, W = 8, 4, 64, 32  # demo frame size (64×32) and model (tiny ResNet, width 16); 2 ids × 4 clips
NUM_CLASSES = 4
NUM_STEPS = 3
RTOL = 5e-2
FLOOR = 0.1
TERMS = ("loss", "ce", "triplet", "frame_domain", "clip_domain", "consistency_ce", "consistency_dist")


def _config(dtype):
    c = demo.get_config()
    c.model.dtype = dtype
    c.batch.target_size = B
    c.adaptation.kmeans_clusters = 4
    c.adaptation.consistency_rampup_steps = 0  # full consistency weight from step 0
    return c


def _batches():
    rng = np.random.default_rng(0)
    return [{"source": {"video": rng.integers(0, 256, (B, T, H, W, 3), dtype=np.uint8),
                        "pid": np.repeat(np.arange(B // 4), 4).astype(np.int32)},
             "target": {"video": rng.integers(0, 256, (B, T, H, W, 3), dtype=np.uint8),
                        "camid": np.arange(B, dtype=np.int32) % 3}}
            for _ in range(NUM_STEPS)]


def _run(dtype, params, batch_stats, batches):
    config = _config(dtype)
    assert (config.data.height, config.data.width) == (H, W)
    model = create_model(config, NUM_CLASSES)
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=10)
    lowered = jax.jit(variants.make_train_step(model, config)).lower(state, batches[0])
    hlo = lowered.as_text()
    compiled = lowered.compile()
    history = []
    for batch in batches:
        state, metrics = compiled(state, batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return hlo, history


@pytest.fixture(scope="module")
def runs():
    config = _config("float32")
    model = create_model(config, NUM_CLASSES)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    batches = _batches()
    return {dtype: _run(dtype, params, batch_stats, batches) for dtype in ("float32", "bfloat16")}


@pytest.mark.slow
def test_bf16_step_really_computes_in_bf16(runs):
    f32_hlo, _ = runs["float32"]
    bf16_hlo, _ = runs["bfloat16"]
    assert "bf16" in bf16_hlo and "convolution" in bf16_hlo
    assert "bf16" not in f32_hlo


@pytest.mark.slow
def test_bf16_losses_match_f32_and_are_finite(runs):
    _, f32 = runs["float32"]
    _, bf16 = runs["bfloat16"]
    worst = 0.0
    for step, (a, b) in enumerate(zip(bf16, f32)):
        for name in TERMS:
            assert np.isfinite(a[name]) and np.isfinite(b[name]), (step, name, a[name], b[name])
            err = abs(a[name] - b[name]) / max(abs(b[name]), FLOOR)
            print(f"step {step} {name}: f32 {b[name]:.5f} bf16 {a[name]:.5f} rel {err:.2e}")
            worst = max(worst, err)
            assert err <= RTOL, f"step {step} {name}: bf16 {a[name]:.5f} vs f32 {b[name]:.5f} (rel {err:.2e})"
        assert a["skipped"] == 0.0 and b["skipped"] == 0.0
        assert np.isfinite(a["grad_norm"]) and np.isfinite(b["grad_norm"])
    print(f"worst relative difference {worst:.2e} (tolerance {RTOL})")
