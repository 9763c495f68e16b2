"""Diagnostics: hand-checked values of each measure, and the mode end to end on a micro checkpoint."""
import math

import numpy as np
import pytest

from svreid_jax.evaluation import diagnostics


def test_cluster_agreement_hand_values():
    # Perfect (up to renaming) → NMI 1, purity 1.
    assert diagnostics.cluster_agreement([5, 5, 7, 7], [0, 0, 1, 1]) == {"nmi": pytest.approx(1.0), "purity": 1.0}
    # One cluster for two balanced labels: MI 0 → NMI 0; purity 1/2.
    assert diagnostics.cluster_agreement([0, 0, 0, 0], [0, 0, 1, 1]) == {"nmi": 0.0, "purity": 0.5}
    # Clusters {a,a,b} {b}: joint p = [[1/2, 1/4], [0, 1/4]]; H(clusters) = H(3/4, 1/4), H(labels) = ln 2.
    got = diagnostics.cluster_agreement([0, 0, 0, 1], [0, 0, 1, 1])
    h_c = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mi = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert got["nmi"] == pytest.approx(mi / ((h_c + math.log(2)) / 2))
    assert got["purity"] == pytest.approx(0.75)


def test_camera_pair_rank1_hand_case():
    # Two queries (pid 1 in camera 0, pid 2 in camera 1); gallery: pid 1 and 2 in cameras 1 and 2.
    q_pids, q_cams = np.array([1, 2]), np.array([0, 1])
    g_pids, g_cams = np.array([1, 2, 1, 2]), np.array([1, 1, 2, 2])
    d = np.array([[0.1, 0.5, 0.9, 0.2],   # q0 vs camera 1: nearest g0 (pid 1) → hit; camera 2: g3 (pid 2) → miss
                  [0.3, 0.4, 0.8, 0.1]])  # q1 vs camera 1: only same-camera → skipped (diagonal); camera 2: g3 hit
    rate, counts = diagnostics.camera_pair_rank1(d, q_pids, g_pids, q_cams, g_cams)
    assert rate.shape == (3, 3) and counts[0, 1] == counts[0, 2] == counts[1, 2] == 1
    assert rate[0, 1] == 1.0 and rate[0, 2] == 0.0 and rate[1, 2] == 1.0
    assert np.isnan(rate[1, 1]) and np.isnan(rate[2, 0]) and counts.sum() == 3


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    x[:, 3] += np.where(x[:, 3] > 0, 1.0, -1.0)  # a margin of 2 along one axis: linearly separable
    separable = (x[:, 3] > 0).astype(int)
    assert diagnostics.linear_probe(x, separable)["accuracy"] == 1.0
    noise = rng.integers(0, 2, 200)
    result = diagnostics.linear_probe(x, noise)
    assert 0.3 <= result["accuracy"] <= 0.7 and 0.5 <= result["chance"] <= 0.6
    with pytest.raises(ValueError, match="at least 2 classes"):
        diagnostics.linear_probe(x, np.zeros(200, int))


def test_whole_set_clusters_on_camera_shifted_identities():
    from configs import demo

    # 3 identities × 4 cameras, one tracklet each: identity direction plus a strong per-camera offset.
    # Camera-normalised clustering must find the identities; without it the cameras dominate.
    eye = np.eye(8, dtype=np.float32)
    pids, cams = np.repeat(np.arange(3), 4), np.tile(np.arange(4), 3)
    feats = eye[pids] + 2.0 * eye[3 + cams]
    config = demo.get_config("plus")
    config.plus.k1, config.plus.k2, config.plus.eps = 4, 1, 0.6  # DBSCAN (the plus default) on Jaccard distances
    report = diagnostics.whole_set_clusters(config, feats, pids, cams)
    assert report == {"nmi": pytest.approx(1.0), "purity": 1.0, "outliers": 0.0, "clusters": 3, "identities": 3}
    config.plus.camera_normalise = False
    blind = diagnostics.whole_set_clusters(config, feats, pids, cams)
    assert blind["purity"] < 0.7, blind
    # No core point: everything an outlier, no agreement to report.
    config.plus.min_samples = 13
    none = diagnostics.whole_set_clusters(config, feats, pids, cams)
    assert math.isnan(none["nmi"]) and (none["outliers"], none["clusters"]) == (1.0, 0)
