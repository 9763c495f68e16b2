"""grain pipelines: batch structure, P×K groups, determinism, process shards, resume, eval clips."""
import numpy as np
import pytest
from PIL import Image

from svreid_jax.data import pipeline
from svreid_jax.data.records import Tracklet

SPEC = pipeline.ClipSpec(seq_len=4, height=8, width=4, flip=False)


@pytest.fixture(scope="module")
def tracklets(tmp_path_factory):
    """10 identities × 1–5 tracklets of 3–9 frames; each frame's pixels encode (tracklet, frame)."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    out = []
    for pid in range(10):
        for k in range(1 + pid % 5):
            n = int(rng.integers(3, 10))
            frames = []
            for f in range(n):
                path = root / f"{len(out)}_{f}.png"
                pixels = np.full((8, 4, 3), (len(out), f, pid), np.uint8)
                pixels[:, -1] = 255  # a bright right edge shows whether a frame was flipped
                Image.fromarray(pixels).save(path)
                frames.append(str(path))
            out.append(Tracklet(tuple(frames), pid, k % 2))
    return tuple(out)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_source_batches_are_pk_groups(tracklets):
    it, steps = pipeline.source_stream(tracklets, num_identities=2, num_instances=4, spec=SPEC, seed=0, num_threads=1)
    assert steps == 40 // 8  # every pid padded to 4 (pids with 5 tracklets still give one group of 4)
    for batch in _take(it, 6):
        assert batch["video"].shape == (8, 4, 8, 4, 3) and batch["video"].dtype == np.uint8
        groups = batch["pid"].reshape(2, 4)
        assert all(len(set(g)) == 1 for g in groups)
        # The decoded pixels belong to the sampled tracklet.
        np.testing.assert_array_equal(batch["video"][:, 0, 0, 0, 0], batch["index"])
        np.testing.assert_array_equal(batch["video"][:, 0, 0, 0, 2], batch["pid"])


def test_flip_is_clip_consistent(tracklets):
    spec = pipeline.ClipSpec(seq_len=4, height=8, width=4, flip=True)
    it, _ = pipeline.source_stream(tracklets, num_identities=2, num_instances=4, spec=spec, seed=0, num_threads=1)
    flipped = np.concatenate([b["video"][:, :, 0, 0, 0] == 255 for b in _take(it, 20)])  # [clips, T]
    assert np.all(flipped.all(axis=1) | (~flipped).all(axis=1))  # one decision per clip
    assert 0.3 < flipped[:, 0].mean() < 0.7


def test_train_crops_run_forward_in_time(tracklets):
    it, _ = pipeline.source_stream(tracklets, num_identities=2, num_instances=4, spec=SPEC, seed=0, num_threads=1)
    for batch in _take(it, 4):
        frame_ids = batch["video"][:, :, 0, 0, 1].astype(int)
        assert np.all(np.diff(frame_ids, axis=1) >= 0)


def test_same_seed_same_batches_and_resume(tracklets):
    kw = dict(num_identities=2, num_instances=4, spec=SPEC, seed=5, num_threads=2)
    it_a, _ = pipeline.source_stream(tracklets, **kw)
    uninterrupted = _take(it_a, 12)
    it_b, _ = pipeline.source_stream(tracklets, **kw)
    _take(it_b, 7)
    state = it_b.get_state()
    it_c, _ = pipeline.source_stream(tracklets, **kw)
    it_c.set_state(state)
    resumed = _take(it_c, 5)
    for a, b in zip(uninterrupted[7:], resumed):
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["index"], b["index"])


def test_processes_read_disjoint_halves_of_the_global_batch(tracklets):
    kw = dict(num_identities=2, num_instances=4, spec=SPEC, seed=1, num_threads=1)
    whole, _ = pipeline.source_stream(tracklets, **kw)
    part0, _ = pipeline.source_stream(tracklets, process_index=0, process_count=2, **kw)
    part1, _ = pipeline.source_stream(tracklets, process_index=1, process_count=2, **kw)
    for g, a, b in zip(_take(whole, 6), _take(part0, 6), _take(part1, 6)):
        np.testing.assert_array_equal(np.concatenate([a["index"], b["index"]]), g["index"])
        np.testing.assert_array_equal(np.concatenate([a["video"], b["video"]]), g["video"])


def test_target_stream_random_covers_each_epoch(tracklets):
    it = pipeline.target_stream(tracklets, batch_size=5, spec=SPEC, seed=0, num_threads=1)
    seen = np.concatenate([b["index"] for b in _take(it, len(tracklets) // 5)])
    assert sorted(seen) == list(range(len(tracklets)))


def test_target_stream_identity_balanced(tracklets):
    it = pipeline.target_stream(tracklets, batch_size=8, spec=SPEC, seed=0, num_threads=1, identity_balanced=True)
    for b in _take(it, 3):
        assert all(len(set(g)) == 1 for g in b["pid"].reshape(2, 4))


def test_target_views_pair_clips_of_one_tracklet_with_their_own_crops(tracklets):
    it = pipeline.target_stream(tracklets, batch_size=6, spec=SPEC, seed=0, num_threads=1, views_per_tracklet=2)
    batches = _take(it, 2 * len(tracklets) // 6)
    index = np.concatenate([b["index"] for b in batches]).reshape(-1, 2)
    assert np.all(index[:, 0] == index[:, 1])  # side by side in the batch
    assert sorted(index[:, 0]) == list(range(len(tracklets)))  # every tracklet once per epoch
    # Each view draws its own temporal crop: frame numbers (green channel) differ for some pairs.
    frames = np.concatenate([b["video"][:, :, 0, 0, 1] for b in batches]).reshape(-1, 2, SPEC.seq_len)
    assert np.any(frames[:, 0] != frames[:, 1])


def test_target_views_reject_a_batch_that_splits_a_pair(tracklets):
    with pytest.raises(ValueError, match="target_views=2.*multiple"):
        pipeline.target_stream(tracklets, batch_size=5, spec=SPEC, seed=0, views_per_tracklet=2)


def test_eval_clips_begin_and_dense(tracklets):
    batches = list(pipeline.eval_clips(tracklets[:3], spec=SPEC, batch_size=2, method="restricted_begin",
                                       num_threads=1))
    idx = np.concatenate([b["tracklet"] for b in batches])
    np.testing.assert_array_equal(idx, [0, 1, 2, -1])
    dense = list(pipeline.eval_clips(tracklets[:2], spec=SPEC, batch_size=4, method="dense", num_threads=1))
    idx = np.concatenate([b["tracklet"] for b in dense])
    expected = sum(([i] * -(-len(tracklets[i]) // 4) for i in range(2)), [])
    np.testing.assert_array_equal(idx[idx >= 0], expected)
    frames = np.concatenate([b["video"][:, :, 0, 0, 1] for b in dense])[idx == 0].ravel()
    n = len(tracklets[0])
    np.testing.assert_array_equal(frames, np.arange(len(frames)) % n)


def test_empty_split_is_reported():
    with pytest.raises(ValueError, match="source train split holds no tracklets"):
        pipeline.source_stream((), num_identities=2, num_instances=4, spec=SPEC, seed=0)


@pytest.mark.slow  # about 11 s: worker processes; the default stage keeps its 15-minute budget
def test_worker_processes_give_the_same_batches_and_resume(tracklets):
    kw = dict(num_identities=2, num_instances=4, spec=SPEC, seed=3, num_threads=1)
    threads, _ = pipeline.source_stream(tracklets, **kw)
    expected = _take(threads, 4)
    workers, _ = pipeline.source_stream(tracklets, num_workers=2, **kw)
    try:
        got = _take(workers, 2)
        state = workers.get_state()
    finally:
        workers.close()
    resumed, _ = pipeline.source_stream(tracklets, num_workers=2, **kw)
    try:
        resumed.set_state(state)
        got += _take(resumed, 2)
    finally:
        resumed.close()
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["video"], b["video"])


def _on_device(batch):
    import jax

    return jax.device_put({"video": batch["video"], "index": batch["index"]})


def _assert_same(host_batches, device_batches):
    import jax

    assert len(host_batches) == len(device_batches)
    for host, placed in zip(host_batches, device_batches):
        assert isinstance(placed["video"], jax.Array)
        np.testing.assert_array_equal(np.asarray(placed["video"]), host["video"])
        np.testing.assert_array_equal(np.asarray(placed["index"]), host["index"])


@pytest.mark.parametrize("size", [0, 1, 3])
def test_device_prefetch_yields_the_plain_stream(tracklets, size):
    kw = dict(num_identities=2, num_instances=4, spec=SPEC, seed=3, num_threads=2)
    plain, _ = pipeline.source_stream(tracklets, **kw)
    expected = _take(plain, 9)
    inner, _ = pipeline.source_stream(tracklets, **kw)
    _assert_same(expected, _take(pipeline.prefetch_to_device(inner, size, _on_device), 9))
    assert inner.get_state() == {"next_index": 9 + size}  # `size` batches beyond the last handed out


def test_device_prefetch_state_counts_consumed_batches_only(tracklets):
    kw = dict(num_identities=2, num_instances=4, spec=SPEC, seed=4, num_threads=2)
    plain, _ = pipeline.source_stream(tracklets, **kw)
    uninterrupted = _take(plain, 12)

    inner, _ = pipeline.source_stream(tracklets, **kw)
    prefetched = pipeline.prefetch_to_device(inner, 3, _on_device)
    _take(prefetched, 5)
    state = prefetched.get_state()
    # grain's state is the number of batches read: 5 handed out, 3 more read ahead and placed.
    assert state == {"next_index": 5} and inner.get_state() == {"next_index": 8}

    # Restored into a plain iterator (prefetch off on resume) and into a prefetching one.
    fresh, _ = pipeline.source_stream(tracklets, **kw)
    fresh.set_state(state)
    resumed_plain = _take(fresh, 7)
    for a, b in zip(uninterrupted[5:], resumed_plain):
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["index"], b["index"])
    fresh, _ = pipeline.source_stream(tracklets, **kw)
    resumed = pipeline.prefetch_to_device(fresh, 2, _on_device)
    resumed.set_state(state)
    _assert_same(uninterrupted[5:], _take(resumed, 7))

    # set_state on a wrapper with batches in flight drops them.
    prefetched.set_state(state)
    _assert_same(uninterrupted[5:9], _take(prefetched, 4))


def test_device_prefetch_checkpoints_like_the_plain_iterator(tracklets, tmp_path):
    import jax.numpy as jnp

    from svreid_jax.utils.checkpointing import Checkpointer

    kw = dict(num_identities=2, num_instances=4, spec=SPEC, seed=6, num_threads=1)
    plain, _ = pipeline.source_stream(tracklets, **kw)
    uninterrupted = _take(plain, 8)
    inner, _ = pipeline.source_stream(tracklets, **kw)
    prefetched = pipeline.prefetch_to_device(inner, 2, _on_device)
    _take(prefetched, 3)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), asynchronous=False)
    ckpt.save(3, {"w": jnp.zeros(2)}, {"source_iter": prefetched}, {"step": 3})
    _take(prefetched, 2)  # the saved position must not move with later reads
    ckpt.close()
    # The file is what a plain grain iterator would have written: restore into one.
    fresh, _ = pipeline.source_stream(tracklets, **kw)
    Checkpointer(str(tmp_path / "ckpt")).restore({"w": jnp.zeros(2)}, {"source_iter": fresh})
    for a, b in zip(uninterrupted[3:], _take(fresh, 5)):
        np.testing.assert_array_equal(a["video"], b["video"])
    fresh, _ = pipeline.source_stream(tracklets, **kw)
    wrapped = pipeline.prefetch_to_device(fresh, 2, _on_device)
    Checkpointer(str(tmp_path / "ckpt")).restore({"w": jnp.zeros(2)}, {"source_iter": wrapped})
    _assert_same(uninterrupted[3:], _take(wrapped, 5))
