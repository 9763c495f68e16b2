"""Feature extraction (evaluation/features.py `extract`) against a stub embedding with exact expected means.

Frame j of tracklet i is a PNG whose left half is L(i, j) = 10 i + 2 j + 1 and right half
R(i, j) = 200 − 10 i − 2 j. The stub embeds a clip as (mean over its frames of the top-left pixel,
the same of the top-right pixel) + an offset read from the variables, so every expected feature is a
hand-computable mean of frame values. Five tracklets of 5, 2, 3, 1, 4 frames in batches of 4 clips:
the last batch is mostly padding, and padding wrongly kept would join the last tracklet's mean.
"""
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from svreid_jax import parallel
from svreid_jax.data import pipeline
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import features

LENGTHS = (5, 2, 3, 1, 4)
H, W, T = 8, 4, 2
OFFSET = 0.5

# Frame indices of each tracklet's clips, written out by hand from docs/METHOD.md §2.3 for T = 2.
RESTRICTED_BEGIN = {5: [[0, 2]], 2: [[0, 1]], 3: [[0, 1]], 1: [[0, 0]], 4: [[0, 2]]}
DENSE = {5: [[0, 1], [2, 3], [4, 0]], 2: [[0, 1]], 3: [[0, 1], [2, 0]], 1: [[0, 0]], 4: [[0, 1], [2, 3]]}


def left(i, j):
    return 10 * i + 2 * j + 1


def right(i, j):
    return 200 - 10 * i - 2 * j


@pytest.fixture(scope="module")
def tracklets(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    out = []
    for i, n in enumerate(LENGTHS):
        frames = []
        for j in range(n):
            image = np.zeros((H, W, 3), np.uint8)
            image[:, : W // 2], image[:, W // 2:] = left(i, j), right(i, j)
            path = root / f"t{i}_f{j}.png"
            Image.fromarray(image).save(path)
            frames.append(str(path))
        out.append(Tracklet(frames=tuple(frames), pid=i, camid=0))
    return tuple(out)


def stub_embed(variables, video):
    """uint8 [B, T, H, W, 3] → [B, 2]: mean over T of the top-left and the top-right pixel, + offset."""
    corners = jnp.stack([video[:, :, 0, 0, 0], video[:, :, 0, -1, 0]], axis=-1).astype(jnp.float32)
    return jnp.mean(corners, axis=1) + variables["offset"]


def expected(clips_by_length, flip):
    want = []
    for i, n in enumerate(LENGTHS):
        clips = clips_by_length[n]
        l_mean = np.mean([np.mean([left(i, j) for j in clip]) for clip in clips])
        r_mean = np.mean([np.mean([right(i, j) for j in clip]) for clip in clips])
        # A mirrored clip swaps the two corners; flip averaging averages the clip and its mirror.
        row = [(l_mean + r_mean) / 2] * 2 if flip else [l_mean, r_mean]
        want.append(np.asarray(row) + OFFSET)
    return np.asarray(want).astype(np.float32)


@pytest.mark.parametrize("method,clips", [("restricted_begin", RESTRICTED_BEGIN), ("dense", DENSE)])
@pytest.mark.parametrize("flip", [False, True])
def test_extract_averages_clips_and_mirrors_and_drops_padding(tracklets, method, clips, flip):
    spec = pipeline.ClipSpec(seq_len=T, height=H, width=W, temporal=method, flip=False, decoder="pil")
    got = features.extract(stub_embed, {"offset": jnp.float32(OFFSET)}, tracklets, spec=spec, batch_size=4,
                           method=method, mesh=parallel.data_mesh(), num_threads=1, flip_average=flip)
    assert got.dtype == np.float32 and got.shape == (len(LENGTHS), 2)
    np.testing.assert_array_equal(got, expected(clips, flip))


def test_expected_values_are_sensitive_to_padding_and_to_the_dense_clips():
    # The oracle itself: a zero padding clip (embedding = offset) joining the last tracklet, or the
    # restricted-begin clip instead of the dense ones, would change the numbers the test expects.
    dense = expected(DENSE, False)
    padded_last = (dense[-1] * 2 + OFFSET) / 3  # the last tracklet has 2 dense clips
    assert not np.allclose(dense[-1], padded_last)
    assert not np.allclose(dense, expected(RESTRICTED_BEGIN, False))
    # Tracklet 0 by hand: dense clips (0,1), (2,3), (4,0) → left mean (1+3+5+7+9+1)/6 = 26/6.
    assert dense[0, 0] == np.float32(26 / 6 + OFFSET)


def test_extract_refuses_a_batch_the_devices_cannot_split(tracklets):
    class TwoDevices:
        size = 2

    spec = pipeline.ClipSpec(seq_len=T, height=H, width=W, temporal="restricted_begin", flip=False)
    with pytest.raises(ValueError, match="eval batch size 3 is not a multiple of the 2 devices"):
        features.extract(stub_embed, {"offset": 0.0}, tracklets, spec=spec, batch_size=3, method="restricted_begin",
                         mesh=TwoDevices())


class _Device:
    def __init__(self, platform):
        self.platform = platform


class _Mesh:
    """What the sizing rule reads of a mesh: its devices' platform and their count."""

    def __init__(self, platform, n):
        self.devices = np.asarray([_Device(platform) for _ in range(n)], dtype=object)
        self.size = n


def test_eval_sizing_on_cpu_is_what_evaluation_always_used():
    from configs import default

    config = default.get_config()
    assert (config.eval.batch_size, config.eval.num_threads) == (0, 0)
    # This host's CPU devices, and CPU meshes the batch must split over.
    assert features.eval_sizing(config, parallel.data_mesh()) == (32, config.data.num_threads) == (32, 2)
    assert features.eval_sizing(config, _Mesh("cpu", 2)) == (32, 2)
    assert features.eval_sizing(config, _Mesh("cpu", 3)) == (33, 2)
    config.data.num_threads = 5
    assert features.eval_sizing(config, _Mesh("cpu", 1)) == (32, 5)
    # Values set in the config are used as they are, on any platform.
    config.eval.batch_size, config.eval.num_threads = 48, 3
    assert features.eval_sizing(config, _Mesh("cpu", 1)) == (48, 3)
    assert features.eval_sizing(config, _Mesh("gpu", 8)) == (48, 3)
    # A config stored before eval.num_threads existed sizes itself like 0.
    del config.eval["num_threads"]
    assert features.eval_sizing(config, _Mesh("cpu", 1)) == (48, 5)


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_eval_sizing_on_accelerators_scales_with_devices_and_cores(platform, monkeypatch):
    from configs import default

    config = default.get_config()
    monkeypatch.setattr(features.os, "cpu_count", lambda: 16)
    # 512 frames per device: 128 clips of 4 frames, × the device count.
    assert features.eval_sizing(config, _Mesh(platform, 1)) == (128, 16)
    assert features.eval_sizing(config, _Mesh(platform, 8)) == (1024, 16)
    config.eval.seq_len = 6
    assert features.eval_sizing(config, _Mesh(platform, 8))[0] == 85 * 8
    config.eval.seq_len = 1024
    assert features.eval_sizing(config, _Mesh(platform, 8))[0] == 8
    # Threads: one per core, at most MAX_AUTO_THREADS, never fewer than data.num_threads.
    monkeypatch.setattr(features.os, "cpu_count", lambda: 200)
    assert features.eval_sizing(config, _Mesh(platform, 1))[1] == features.MAX_AUTO_THREADS == 32
    monkeypatch.setattr(features.os, "cpu_count", lambda: None)
    assert features.eval_sizing(config, _Mesh(platform, 1))[1] == config.data.num_threads == 2


def test_extract_sizes_itself_when_given_zeros(tracklets):
    spec = pipeline.ClipSpec(seq_len=T, height=H, width=W, temporal="restricted_begin", flip=False, decoder="pil")
    kw = dict(spec=spec, method="restricted_begin", mesh=parallel.data_mesh())
    auto = features.extract(stub_embed, {"offset": jnp.float32(OFFSET)}, tracklets, batch_size=0, num_threads=0, **kw)
    explicit = features.extract(stub_embed, {"offset": jnp.float32(OFFSET)}, tracklets, batch_size=32, num_threads=2,
                                **kw)
    np.testing.assert_array_equal(auto, explicit)
    np.testing.assert_array_equal(auto, expected(RESTRICTED_BEGIN, False))
