"""Sampler invariants and temporal crops on hand-made lengths."""
import numpy as np
import pytest

from svreid_jax.data import sampling


PIDS = [0] * 9 + [1] * 2 + [2] * 4 + [3] * 6  # 9, 2 (padded to 4), 4, 6 tracklets


def test_identity_epoch_length_formula():
    # Σ max(n,4) − max(n,4) mod 4: 9→8, 2→4, 4→4, 6→4
    assert sampling.identity_epoch_length(PIDS, 4) == 20
    assert len(sampling.identity_epoch(PIDS, 4, seed=0, epoch=0)) == 20


def test_identity_epoch_groups_share_a_pid_and_cover_every_identity():
    order = sampling.identity_epoch(PIDS, 4, seed=3, epoch=1)
    groups = np.asarray(PIDS)[order].reshape(-1, 4)
    assert all(len(set(g)) == 1 for g in groups)
    assert sorted(set(groups[:, 0])) == [0, 1, 2, 3]
    # pid 0 has 9 tracklets → two groups of distinct tracklets; pid 1 repeats with replacement.
    zero = order[np.asarray(PIDS)[order] == 0]
    assert len(zero) == 8 and len(set(zero)) == 8


def test_identity_epoch_is_deterministic_per_seed_and_epoch():
    a = sampling.identity_epoch(PIDS, 4, seed=1, epoch=2)
    np.testing.assert_array_equal(a, sampling.identity_epoch(PIDS, 4, seed=1, epoch=2))
    assert not np.array_equal(a, sampling.identity_epoch(PIDS, 4, seed=1, epoch=3))
    assert not np.array_equal(a, sampling.identity_epoch(PIDS, 4, seed=2, epoch=2))


def test_random_epoch_is_a_permutation():
    order = sampling.random_epoch(10, seed=0, epoch=0)
    assert sorted(order) == list(range(10))
    twice = sampling.random_epoch(10, seed=0, epoch=0, views=2)
    np.testing.assert_array_equal(twice, np.repeat(order, 2))
    with pytest.raises(ValueError, match="views"):
        sampling.random_epoch(10, seed=0, epoch=0, views=0)


@pytest.mark.parametrize("n", [1, 3, 4, 9, 17])
def test_restricted_random_picks_one_frame_per_block(n):
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sampling.restricted_random(n, 4, rng)
        assert idx.shape == (4,)
        assert np.all(idx >= 0) and np.all(idx < n)
        length = max(n, 4)
        b = length // 4
        for i, j in enumerate(idx[:3]):
            assert min(i * b, n - 1) <= j <= min((i + 1) * b - 1, n - 1)
        assert min(3 * b, n - 1) <= idx[3] <= n - 1


def test_restricted_begin_hand_values():
    np.testing.assert_array_equal(sampling.restricted_begin(9, 4), [0, 2, 4, 6])
    np.testing.assert_array_equal(sampling.restricted_begin(4, 4), [0, 1, 2, 3])
    # Shorter than T: the last frame is repeated.
    np.testing.assert_array_equal(sampling.restricted_begin(2, 4), [0, 1, 1, 1])


def test_evenly_spaced_hand_values():
    np.testing.assert_array_equal(sampling.evenly_spaced(8, 4), [0, 2, 4, 6])
    np.testing.assert_array_equal(sampling.evenly_spaced(10, 4), [0, 2, 5, 7])
    np.testing.assert_array_equal(sampling.evenly_spaced(3, 4), [0, 1, 2, 2])


def test_dense_chunks_loop_pad():
    np.testing.assert_array_equal(sampling.dense_chunks(6, 4), [[0, 1, 2, 3], [4, 5, 0, 1]])
    np.testing.assert_array_equal(sampling.dense_chunks(2, 4), [[0, 1, 0, 1]])


def test_unknown_temporal_method_is_named():
    with pytest.raises(ValueError, match="unknown temporal sampling 'middle'"):
        sampling.clip_indices(5, 4, "middle")
