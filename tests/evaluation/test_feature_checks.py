"""Evaluation refuses features no metric may be computed from (features.check_features, Evaluator):
NaN/inf anywhere, or a query or gallery set of zero vectors only; a few zero-norm features are counted
in the metrics. Without the check such features rank by gallery order and give R-1/mAP above zero."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging
from PIL import Image

from svreid_jax import parallel
from svreid_jax.data import augment, pipeline
from svreid_jax.data.records import DatasetSplits, Tracklet
from svreid_jax.evaluation import evaluators, features, protocols
from svreid_jax.evaluation.evaluate import Evaluator

H, W, T = 8, 4, 2


def _feats(n, nan=(), inf=(), zero=(), dim=3, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32) + 2.0
    x[list(nan), 1] = np.nan
    x[list(inf), 0] = -np.inf
    x[list(zero)] = 0.0
    return x


def test_non_finite_features_are_refused_with_the_counts_of_each_set():
    with pytest.raises(features.FeatureError) as err:
        features.check_features({"query": _feats(4, nan=(1,)), "gallery": _feats(6, inf=(0, 5), zero=(2,))})
    message = str(err.value)
    assert "\n" not in message
    assert ("evaluation features cannot be ranked (query: 1 of 4 non-finite (NaN/inf), 0 zero-norm; "
            "gallery: 2 of 6 non-finite (NaN/inf), 1 zero-norm); no metrics computed") in message
    assert isinstance(err.value, ValueError)


def test_a_set_of_zero_vectors_only_is_refused():
    with pytest.raises(features.FeatureError, match=r"query: 0 of 3 non-finite \(NaN/inf\), 3 zero-norm"):
        features.check_features({"query": _feats(3, zero=(0, 1, 2)), "gallery": _feats(5)})
    # Norms at or below ops.EPS have no direction either; just above it they do.
    with pytest.raises(features.FeatureError, match="gallery: 0 of 2 non-finite"):
        features.check_features({"query": _feats(3), "gallery": np.full((2, 4), 4e-13, np.float32)})
    assert features.check_features({"query": _feats(3), "gallery": np.full((2, 4), 1e-12, np.float32)}) == {}


def test_a_few_zero_norm_features_are_counted_and_warned_about(monkeypatch):
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
    assert features.check_features({"query": _feats(4), "gallery": _feats(6)}) == {}
    assert warnings == []
    got = features.check_features({"query": _feats(4, zero=(3,)), "gallery": _feats(6, zero=(0, 4))})
    assert got == {"query": 1, "gallery": 2}
    assert warnings == ["evaluation features: 1 of 4 query, 2 of 6 gallery zero-norm (no direction: their cosine "
                        "ranks follow gallery order); the metrics record the counts as zero_norm_<set>"]
    assert features.feature_counts(np.zeros((0, 3), np.float32)) == (0, 0)
    assert features.check_features({"query": np.zeros((0, 3), np.float32), "gallery": _feats(2)}) == {}


# An Evaluator end to end on real frames with a stub model whose output is set per tracklet: frame 0 of
# tracklet i has left-half pixel value 10·i + 1, and the stub replaces the embedding of every clip whose
# first pixel is below `cut` by `fill` (NaN, inf or 0).


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    out = []
    for i, (pid, camid) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]):
        frames = []
        for j in range(3):
            image = np.full((H, W, 3), 10 * i + 1 + j, np.uint8)
            image[:, W // 2:] = 200 - 10 * i - j
            path = root / f"t{i}_f{j}.png"
            Image.fromarray(image).save(path)
            frames.append(str(path))
        out.append(Tracklet(frames=tuple(frames), pid=pid, camid=camid))
    return DatasetSplits(train=(), query=tuple(out[:2]), gallery=tuple(out[2:]))


@dataclasses.dataclass(frozen=True)
class _StubModel:
    def apply(self, variables, video, train):
        first = video[:, 0, 0, 0, 0]
        emb = jnp.stack([video[:, 0, 0, 0, 0], video[:, 0, 0, -1, 0], jnp.ones_like(first)], axis=-1)
        return {"bn_embedding": jnp.where((first < variables["cut"])[:, None], variables["fill"], emb)}


def _evaluator():
    spec = pipeline.ClipSpec(seq_len=T, height=H, width=W, temporal="restricted_begin", flip=False, decoder="pil")
    return Evaluator(model=_StubModel(), mesh=parallel.data_mesh(), spec=spec, distance=protocols.DistanceSpec(),
                     protocol=evaluators.get("standard"), protocol_options={}, batch_size=4,
                     temporal="restricted_begin", num_threads=1, flip_average=False, max_rank=3,
                     camera_normalise=False, use_teacher=False)


def _cut(pixel):
    """The normalised value of a pixel of the left half (red channel), as the stub model sees it."""
    return float(augment.normalize(jnp.full((3,), pixel, jnp.uint8))[0])


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_evaluator_refuses_non_finite_query_features(splits, fill):
    evaluator = _evaluator()
    variables = {"cut": jnp.float32(_cut(5)), "fill": jnp.float32(fill)}  # tracklet 0: the first query
    with pytest.raises(features.FeatureError, match=r"query: 1 of 2 non-finite \(NaN/inf\), 0 zero-norm; "
                                                    r"gallery: 0 of 3 non-finite"):
        evaluator(variables, splits)


def test_evaluator_refuses_all_zero_queries_and_counts_a_zero_gallery_feature(splits):
    evaluator = _evaluator()
    with pytest.raises(features.FeatureError, match="query: 0 of 2 non-finite \\(NaN/inf\\), 2 zero-norm"):
        evaluator({"cut": jnp.float32(_cut(15)), "fill": jnp.float32(0.0)}, splits)  # tracklets 0, 1
    clean = evaluator({"cut": jnp.float32(-10.0), "fill": jnp.float32(0.0)}, splits)
    assert not any(k.startswith("zero_norm") for k in clean)
    # Swap the order so the zero-norm one is a gallery tracklet: every query's distances stay finite.
    swapped = DatasetSplits(train=(), query=splits.gallery[:2], gallery=splits.query + splits.gallery[2:])
    got = evaluator({"cut": jnp.float32(_cut(5)), "fill": jnp.float32(0.0)}, swapped)  # tracklet 0 only
    assert got["zero_norm_gallery"] == 1.0 and "zero_norm_query" not in got
    assert got["num_valid_queries"] == 2.0 and np.isfinite(got["mAP"])


def test_evaluator_features_cut_clips_as_asked(splits):
    # Three frames, two per clip: the evaluation's clip starts at frame 0; dense takes clips at frames 0 and 2
    # (the second loop-padded), whose mean first pixel is frame 1's (normalisation is affine).
    evaluator = _evaluator()
    variables = {"cut": jnp.float32(-10.0), "fill": jnp.float32(0.0)}
    tracklets = splits.query + splits.gallery
    firsts = [10 * i + 1 for i in range(len(tracklets))]
    own = evaluator.features(variables, tracklets)
    dense = evaluator.features(variables, tracklets, temporal="dense")
    np.testing.assert_allclose(own[:, 0], [_cut(p) for p in firsts], atol=1e-6)
    np.testing.assert_allclose(dense[:, 0], [_cut(p + 1) for p in firsts], atol=1e-6)
