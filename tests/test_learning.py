"""Training learns: a few hundred steps of the source recipe on generated identities raise their rank-1
accuracy (fresh clips of the trained identities, query against gallery) far above chance and above
where the untrained network starts.

Each identity is a 4×2 layout of bright and dark cells; every clip paints it in its own random colours
under pixel noise, so the colours carry no identity and the layout has to be learnt.
"""
import jax
import numpy as np
import pytest

from configs import demo
from svreid_jax import variants
from svreid_jax.data import augment
from svreid_jax.models import reid
from svreid_jax.state import create_train_state

K, T, H, W = 16, 2, 32, 16  # identities; clip length; frame size
STEPS = 300
CHANCE = 1 / K  # one gallery identity of K is the query's


def _clips(layouts, ids, rng):
    """uint8 clips [len(ids), T, H, W, 3] of the identities `ids`."""
    mask = layouts[ids].repeat(H // 4, axis=1).repeat(W // 2, axis=2)[:, None, :, :, None]
    bright = rng.uniform(130, 255, (len(ids), 1, 1, 1, 3))
    dark = rng.uniform(0, 125, (len(ids), 1, 1, 1, 3))
    noise = rng.normal(0, 20, (len(ids), T, H, W, 3))
    return np.clip(mask * bright + (1 - mask) * dark + noise, 0, 255).astype(np.uint8)


def _rank1(embed, state, query, query_ids, gallery, gallery_ids):
    """Rank-1 of cosine similarity, in numpy: the share of queries whose nearest gallery clip is theirs."""
    def unit(videos):
        x = np.asarray(embed(state.params, state.batch_stats, augment.normalize(videos)), np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    nearest = np.argmax(unit(query) @ unit(gallery).T, axis=1)
    return float(np.mean(gallery_ids[nearest] == query_ids))


@pytest.mark.slow  # about 25 s of training; the default stage keeps its 15-minute budget
def test_a_few_hundred_steps_raise_rank1_far_above_chance():
    rng = np.random.default_rng(0)
    codes = rng.permutation(256)[:K]  # K distinct 8-cell layouts
    layouts = ((codes[:, None] >> np.arange(8)) & 1).reshape(K, 4, 2).astype(np.float64)

    config = demo.get_config("source_only")
    config.data.height, config.data.width, config.data.seq_len = H, W, T
    config.model.width = 8
    config.augment.erasing_probability = 0.0
    model = reid.ReIDNet(num_classes=K, backbone={"depth": "tiny", "width": 8}, disc_hidden=16)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0), (1, T, H, W, 3))
    state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1), steps_per_epoch=50)
    step = jax.jit(variants.make_train_step(model, config))
    embed = jax.jit(lambda p, b, x: model.apply({"params": p, "batch_stats": b}, x, train=False)["bn_embedding"])

    held = np.random.default_rng(1)  # clips no step sees: one query and two gallery clips per identity
    query_ids, gallery_ids = np.arange(K), np.repeat(np.arange(K), 2)
    query, gallery = _clips(layouts, query_ids, held), _clips(layouts, gallery_ids, held)
    before = _rank1(embed, state, query, query_ids, gallery, gallery_ids)

    draw = np.random.default_rng(2)
    for _ in range(STEPS):  # P×K batches: 2 identities × 4 clips, fresh clips every step
        ids = np.repeat(draw.choice(K, 2, replace=False), 4)
        batch = {"source": {"video": _clips(layouts, ids, draw), "pid": ids.astype(np.int32)},
                 "target": {"video": _clips(layouts, ids, draw)}}  # read by no term of source_only
        state, metrics = step(state, batch)
    assert int(state.step) == STEPS and np.isfinite(float(metrics["loss"]))

    after = _rank1(embed, state, query, query_ids, gallery, gallery_ids)
    assert after >= 3 * CHANCE, (before, after)
    assert after >= before + 0.25, (before, after)  # learnt, not the untrained network's colour matching
