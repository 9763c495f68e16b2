"""Host decode/resize/flip and on-device normalisation and erasing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from svreid_jax.data import transforms


def _write(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return str(path)


def test_load_clip_resizes_and_flips_every_frame_alike(tmp_path):
    rng = np.random.default_rng(0)
    frames = [_write(tmp_path, f"{i}.png", rng.integers(0, 255, (20, 10, 3), dtype=np.uint8)) for i in range(3)]
    plain = transforms.load_clip(frames, [0, 1, 2, 2], 16, 8, flip=False)
    flipped = transforms.load_clip(frames, [0, 1, 2, 2], 16, 8, flip=True)
    assert plain.shape == (4, 16, 8, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1])
    expected = np.asarray(Image.open(frames[1]).convert("RGB").resize((8, 16), Image.BICUBIC))
    np.testing.assert_array_equal(plain[1], expected)


def test_missing_frame_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: .*nothere.jpg"):
        transforms.load_frame(str(tmp_path / "nothere.jpg"), 8, 4)


def test_normalize_matches_imagenet_formula():
    video = jnp.asarray(np.arange(12, dtype=np.uint8).reshape(1, 1, 2, 2, 3) * 20)
    got = np.asarray(transforms.normalize(video))
    expected = (np.asarray(video, np.float32) / 255 - np.array(transforms.IMAGENET_MEAN)) / np.array(
        transforms.IMAGENET_STD)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_random_erasing_statistics_and_clip_semantics():
    b, t, h, w = 2000, 4, 32, 16
    video = jnp.full((b, t, h, w, 3), -5.0)
    out = np.asarray(transforms.random_erasing(jax.random.PRNGKey(0), video))
    erased = np.all(out == np.asarray(transforms.ERASE_FILL, np.float32), axis=-1)  # [B,T,H,W]
    clip_erased = erased.any(axis=(1, 2, 3))
    # Probability 0.5 per clip (a few attempts may all miss: slightly below 0.5).
    assert 0.45 < clip_erased.mean() < 0.53
    area = erased[clip_erased].mean(axis=(2, 3))  # fraction of each frame erased
    frames_hit = area[area > 0]
    # Rounding h and w to whole pixels (as the reference does) moves the area a little past the range.
    assert frames_hit.min() >= 0.01 and frames_hit.max() <= 0.45
    assert 0.15 < frames_hit.mean() < 0.26  # U(0.02, 0.4) has mean 0.21
    # Area is drawn per frame: frames of one erased clip usually differ in size.
    assert np.mean(np.ptp(area, axis=1) > 0) > 0.5
    # The relative top-left corner is shared: with all four boxes equal in size, the corners coincide.
    for clip in np.flatnonzero(clip_erased)[:200]:
        rows = [np.flatnonzero(erased[clip, f].any(1)) for f in range(t)]
        sizes = [(len(r), erased[clip, f].any(0).sum()) for f, r in enumerate(rows)]
        if len(set(sizes)) == 1 and sizes[0][0] > 0:
            assert len({r[0] for r in rows}) == 1


def test_random_erasing_probability_zero_is_identity():
    video = jnp.ones((3, 2, 8, 4, 3))
    np.testing.assert_array_equal(np.asarray(transforms.random_erasing(jax.random.PRNGKey(1), video, probability=0.0)),
                                  np.asarray(video))
