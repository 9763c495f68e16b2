"""Evaluation protocols: CCVID general/SC/CC, MARS gallery conventions, multi-split mean ± std, tables.

The small cases are worked out by hand in the comments; the MARS helper is also checked against the
reader's own include_query / all galleries on the demo data.
"""
import zlib

import numpy as np
import pytest

from svreid_jax import ops
from svreid_jax.data import datasets, demo as demo_data
from svreid_jax.data.records import DatasetSplits, Tracklet
from svreid_jax.evaluation import evaluate, evaluators, protocols, ranking


def _t(name, pid, cam, clothes=None):
    return Tracklet(frames=(f"/x/{name}.jpg",), pid=pid, camid=cam, clothes_id=clothes)


EUCLID = protocols.DistanceSpec(metric="euclidean")


# ---------------------------------------------------------------------------------------------------------
# CCVID: general / same clothes / clothes-changing


def test_clothes_protocols_by_hand():
    query = [_t("q0", 1, 0, 0), _t("q1", 2, 0, 5)]
    gallery = [_t("g0", 1, 1, 0),  # q0: other camera, same clothes  -> good (general, SC)
               _t("g1", 1, 1, 1),  # q0: other camera, other clothes -> good (general, CC)
               _t("g2", 2, 1, 5),  # q1's only match, same clothes
               _t("g3", 1, 0, 0)]  # q0: same camera -> junk everywhere
    distmat = np.array([[0.4, 0.2, 0.1, 0.3],
                        [0.5, 0.6, 0.05, 0.7]])
    res = protocols.clothes_protocols(distmat, query, gallery, max_rank=4)
    assert list(res) == ["general", "same_clothes", "clothes_changing"]
    # general, q0: junk g3 out -> g2, g1, g0: goods at ranks 1, 2 -> AP (1/2 + 2/3) / 2 = 7/12; q1: g2 first, AP 1
    g = res["general"]
    assert g.num_valid_queries == 2 and g.cmc.tolist() == [0.5, 1.0, 1.0, 1.0]
    assert g.mAP == pytest.approx((7 / 12 + 1) / 2)
    # SC, q0: g1 (other clothes) is junk too -> g2, g0: AP 1/2; q1: AP 1
    sc = res["same_clothes"]
    assert sc.cmc[0] == 0.5 and sc.mAP == pytest.approx(0.75)
    # CC, q0: g0 (same clothes) is junk -> g2, g1: AP 1/2; q1 has no other-clothes match: skipped
    cc = res["clothes_changing"]
    assert cc.num_valid_queries == 1 and cc.num_skipped_queries == 1
    assert cc.cmc[0] == 0.0 and cc.cmc[1] == 1.0 and cc.mAP == pytest.approx(0.5)


def test_clothes_protocols_only_with_clothes_ids():
    query, gallery = [_t("q", 1, 0)], [_t("g", 1, 1)]
    assert list(protocols.clothes_protocols(np.zeros((1, 1)), query, gallery)) == ["general"]
    with pytest.raises(ValueError, match="clothes id"):
        protocols.clothes_protocols(np.zeros((1, 1)), query, gallery, clothes=True)


def test_standard_protocol_on_features_reranked_too():
    rng = np.random.default_rng(0)
    query = [_t(f"q{i}", i % 3, 0, i % 2) for i in range(6)]
    gallery = [_t(f"g{i}", i % 3, 1, (i // 3) % 2) for i in range(30)]
    q, g = rng.normal(size=(6, 8)), rng.normal(size=(30, 8))
    for spec in (protocols.DistanceSpec(), protocols.DistanceSpec(rerank=True, k1=5, k2=2)):
        res = evaluators.get("standard")(evaluators.ProtocolInputs(q, g, query, gallery, distance=spec))
        assert list(res) == ["general", "same_clothes", "clothes_changing"]
        direct = ranking.evaluate_ranking(protocols.distances(q, g, spec), *_pids_cams(query, gallery))
        assert res["general"].mAP == direct.mAP
    only = evaluators.standard(evaluators.ProtocolInputs(q, g, query, gallery, distance=protocols.DistanceSpec(),
                                                         all_protocols=False))
    assert list(only) == ["general"]


def _pids_cams(query, gallery):
    qp, qc = protocols.labels(query)
    gp, gc = protocols.labels(gallery)
    return qp, gp, qc, gc


# ---------------------------------------------------------------------------------------------------------
# MARS gallery conventions


def _mars_case():
    # 1-D positions (second coordinate 0), Euclidean distances.
    query = [_t("q0", 1, 0), _t("q1", 1, 1), _t("q2", 2, 0)]  # q0, q1: each other's only positives
    gallery = [_t("g0", 2, 1), _t("g1", 3, 0), _t("g2", 0, 1)]
    qf = np.array([[0.0, 0], [3, 0], [10, 0]])
    gf = np.array([[11.0, 0], [1, 0], [2, 0]])
    return query, gallery, qf, gf


def test_mars_conventions_by_hand():
    query, gallery, qf, gf = _mars_case()
    all_gallery = [gallery[1], query[0], gallery[0], query[1], gallery[2], query[2]]  # some "official" order
    res = protocols.mars_conventions(qf, gf, query, gallery, distance=EUCLID, max_rank=5, all_gallery=all_gallery)
    assert list(res) == ["exclude_query", "include_query", "all"]
    # exclude_query: q0 and q1 have no positive left -> skipped; q2: g0 at distance 1 is first.
    ex = res["exclude_query"]
    assert (ex.num_valid_queries, ex.num_skipped_queries, ex.cmc[0], ex.mAP) == (1, 2, 1.0, 1.0)
    # include_query: each query's own copy is junk (same pid and camera).
    #   q0 (at 0): g1 1, g2 2, q1 3, ... -> q1 at rank 2, AP 1/3;  q1 (at 3): g2 1, g1 2, q0 3 -> AP 1/3;
    #   q2 (at 10): g0 1 first -> AP 1.
    inc = res["include_query"]
    assert inc.num_valid_queries == 3
    assert inc.cmc[:3].tolist() == pytest.approx([1 / 3, 1 / 3, 1.0])
    assert inc.mAP == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert res["all"].mAP == pytest.approx(inc.mAP) and res["all"].cmc.tolist() == inc.cmc.tolist()
    # Without the official list there is no 'all' row; a tracklet it names that was never extracted is an error.
    assert list(protocols.mars_conventions(qf, gf, query, gallery, distance=EUCLID)) == ["exclude_query",
                                                                                      "include_query"]
    with pytest.raises(ValueError, match="neither query nor gallery"):
        protocols.mars_conventions(qf, gf, query, gallery, distance=EUCLID, all_gallery=[_t("new", 5, 0)])


def test_mars_all_follows_the_official_order_on_ties():
    # q0 at 0 is equally far (1) from its positive q1 and from the negative g1: ties go by gallery index.
    query = [_t("q0", 1, 0), _t("q1", 1, 1)]
    gallery = [_t("g0", 2, 1), _t("g1", 3, 0)]
    qf, gf = np.array([[0.0], [1.0]]), np.array([[5.0], [-1.0]])
    res = protocols.mars_conventions(qf, gf, query, gallery, distance=EUCLID,
                                     all_gallery=[query[1], query[0], gallery[0], gallery[1]])
    # include_query = [g0, g1, q0, q1]: g1 (index 1) before q1 (index 3) -> q0's AP 1/2;
    # all = [q1, q0, g0, g1]: q1 first -> q0's AP 1. (q1's positive q0 is at 1, g1 at 2: AP 1 in both.)
    assert res["include_query"].average_precision.tolist() == [0.5, 1.0]
    assert res["all"].average_precision.tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def toy_target(tmp_path_factory):
    from configs import demo

    options = demo.get_config("paper,micro").data.demo_options.to_dict()
    return demo_data.ensure(str(tmp_path_factory.mktemp("toy")), **options).target_root


def test_mars_helper_matches_the_readers_galleries(toy_target):
    """Appending query features equals evaluating the reader's include_query / all splits directly."""
    splits = {g: datasets.load("mars", toy_target, gallery=g) for g in protocols.MARS_CONVENTIONS}
    base = splits["exclude_query"]

    def feature(t):  # any fixed function of the tracklet will do
        seed = zlib.crc32("\n".join(t.frames).encode())  # hash() would change with PYTHONHASHSEED
        return np.random.default_rng(seed).normal(size=16)

    qf = np.stack([feature(t) for t in base.query])
    gf = np.stack([feature(t) for t in base.gallery])
    res = protocols.mars_conventions(qf, gf, base.query, base.gallery,
                                     all_gallery=protocols.mars_all_gallery(base.query))
    assert list(res) == list(protocols.MARS_CONVENTIONS)
    for name in protocols.MARS_CONVENTIONS:
        s = splits[name]
        direct = protocols.rank(ranking.pairwise_distance(qf, np.stack([feature(t) for t in s.gallery])),
                                s.query, s.gallery)
        assert res[name].mAP == direct.mAP and res[name].cmc.tolist() == direct.cmc.tolist(), name
    assert protocols.mars_all_gallery([_t("q", 1, 0)]) is None  # not a MARS tree: left out with a warning


# ---------------------------------------------------------------------------------------------------------
# Several splits


def test_evaluate_splits_mean_and_std_by_hand():
    a, b, c = _t("a", 1, 0), _t("b", 1, 1), _t("c", 2, 1)
    d, e = _t("d", 2, 0), _t("e", 3, 1)
    # split 0: query a; gallery b (a's match), c. split 1: query d; gallery e, c (d's match, behind e).
    splits = {0: DatasetSplits((), (a,), (b, c)), 1: DatasetSplits((), (d,), (e, c))}
    positions = {"a": 0.0, "b": 1.0, "c": 5.0, "d": 3.0, "e": 3.5}
    calls = []

    def features_fn(tracklets):
        calls.append(len(tracklets))
        return np.array([[positions[t.frames[0][3]], 0.0] for t in tracklets])

    res = protocols.evaluate_splits(splits.__getitem__, features_fn, distance=EUCLID, max_rank=2, split_ids=[0, 1])
    assert calls == [5]  # c is tested by both splits but embedded once
    assert [m["rank1"] for m in res.per_split] == [1.0, 0.0]
    assert [m["mAP"] for m in res.per_split] == [1.0, 0.5]
    assert res.mean["rank1"] == 0.5 and res.mean["mAP"] == 0.75
    assert res.std["rank1"] == pytest.approx(np.sqrt(0.5))  # sample std of (1, 0)
    assert res.std["mAP"] == pytest.approx(np.sqrt(0.125))  # of (1, 0.5)
    flat = res.flat()
    assert flat["rank1"] == 0.5 and flat["std/mAP"] == res.std["mAP"] and flat["split_1/rank1"] == 0.0


def test_evaluate_splits_on_the_ilidsvid_layout(tmp_path):
    """The real reader, split by split: every test person is embedded once over all splits."""
    import scipy.io
    from PIL import Image

    persons = [f"person{i:03d}" for i in (1, 2, 4, 10)]
    for cam in ("cam1", "cam2"):
        for p in persons:
            folder = tmp_path / "i-LIDS-VID" / "sequences" / cam / p
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 16)).save(folder / f"{cam}_{p}_1.png")
    rows = [[1, 2, 3, 4], [3, 4, 1, 2], [2, 3, 1, 4]]  # first half: the test persons
    (tmp_path / "train-test people splits").mkdir()
    scipy.io.savemat(str(tmp_path / "train-test people splits" / "train_test_splits_ilidsvid.mat"),
                     {"ls_set": np.array(rows, np.float64)})
    seen = []

    def features_fn(tracklets):
        seen.extend(tracklets)
        # same person, same point: cam1 and cam2 of a person coincide, persons far apart -> perfect
        return np.array([[float(t.pid), 0.0] for t in tracklets])

    res = protocols.evaluate_splits(lambda s: datasets.load("ilidsvid", str(tmp_path), split_id=s), features_fn,
                                    distance=EUCLID, split_ids=range(3))
    assert len(seen) == 8 and len({t.frames for t in seen}) == 8
    assert res.mean["rank1"] == 1.0 and res.std["rank1"] == 0.0 and res.mean["mAP"] == 1.0
    assert all(m["num_valid_queries"] == 2 for m in res.per_split)


def test_mean_std_single_split():
    mean, std = protocols.mean_std([{"rank1": 0.3}])
    assert mean == {"rank1": 0.3} and std == {"rank1": 0.0}
    with pytest.raises(ValueError):
        protocols.mean_std([])


# ---------------------------------------------------------------------------------------------------------
# Tables


def test_tables_one_row_per_protocol():
    flat = {"rank1": 0.5, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0, "mAP": 0.25, "extract_sec": 3.0,
            "include_query/rank1": 0.125, "include_query/rank5": 0.5, "include_query/rank10": 1.0,
            "include_query/rank20": 1.0, "include_query/mAP": 0.2}
    assert evaluate.results_table(flat, "s → t") == "\n".join([
        "| s → t | R-1 | R-5 | R-10 | R-20 | mAP |",
        "|---|---|---|---|---|---|",
        "| exclude_query | 50.0 | 100.0 | 100.0 | 100.0 | 25.0 |",
        "| include_query | 12.5 | 50.0 | 100.0 | 100.0 | 20.0 |",
    ])
    plain = {k: v for k, v in flat.items() if "/" not in k}
    assert evaluate.results_table(plain, "x").splitlines()[2].startswith("| target | 50.0 |")
    assert protocols.primary_label({"rank1": 1, "same_clothes/rank1": 1}) == "general"


def test_table_with_std():
    res = protocols.SplitsResult(split_ids=(0, 1), per_split=({"rank1": 1.0, "mAP": 1.0}, {"rank1": 0.0, "mAP": 0.5}),
                                 mean={"rank1": 0.5, "mAP": 0.75}, std={"rank1": 0.5, "mAP": 0.25})
    lines = evaluate.results_table(res.flat(), "t").splitlines()
    assert lines[2] == "| mean ± std (2 splits) | 50.0 ± 50.0 | – | – | – | 75.0 ± 25.0 |"
    assert lines[3] == "| split_0 | 100.0 | – | – | – | 100.0 |"


# ---------------------------------------------------------------------------------------------------------
# Camera normalisation (eval.camera_normalise)


def test_camera_centred_removes_each_cameras_mean():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [10.0, 2.0]])
    got = ops.camera_centred(x, np.array([0, 0, 1, 1]), dtype=np.float64)  # as protocols.camera_normalised
    np.testing.assert_allclose(got, [[-1, -1], [1, 1], [0, -1], [0, 1]])


def _camera_bias_case():
    """Identity 1 is [0, 1], identity 2 is [0, −1]; camera 0 adds [10, 0] to everything it films.

    query q (id 1, cam 0) = [10, 1]; gallery g0 (id 1, cam 1) = [0, 1], g1 (id 2, cam 0) = [10, −1],
    g2 (id 2, cam 1) = [0, −1]. Euclidean from q: g0 10, g1 2, g2 √104 — the other person in q's camera
    comes first: R-1 0, AP 1/2. Camera means over query ∪ gallery: cam 0 [10, 0], cam 1 [0, 0]; centred,
    q = g0 = [0, 1] and g1 = g2 = [0, −1]: distances 0, 2, 2, R-1 1, AP 1.
    """
    query = (_t("q", 1, 0),)
    gallery = (_t("g0", 1, 1), _t("g1", 2, 0), _t("g2", 2, 1))
    return query, gallery, np.array([[10.0, 1.0]]), np.array([[0.0, 1.0], [10.0, -1.0], [0.0, -1.0]])


def test_camera_normalised_by_hand():
    query, gallery, q, g = _camera_bias_case()
    qn, gn = protocols.camera_normalised(q, g, query, gallery)
    np.testing.assert_allclose(qn, [[0, 1]])
    np.testing.assert_allclose(gn, [[0, 1], [0, -1], [0, -1]])
    before = protocols.rank(protocols.distances(q, g, EUCLID), query, gallery, max_rank=3)
    after = protocols.rank(protocols.distances(qn, gn, EUCLID), query, gallery, max_rank=3)
    assert before.cmc[0] == 0.0 and before.mAP == pytest.approx(0.5)
    assert after.cmc[0] == 1.0 and after.mAP == pytest.approx(1.0)


@pytest.mark.parametrize("protocol", ["standard", "mars"])
def test_evaluate_applies_camera_normalise_only_when_asked(monkeypatch, protocol):
    from configs import default

    query, gallery, q, g = _camera_bias_case()
    monkeypatch.setattr(evaluate.Evaluator, "features", lambda *a, **k: np.concatenate([q, g]).astype(np.float32))
    monkeypatch.setattr(protocols, "mars_all_gallery", lambda query: None)  # tracklets of no MARS root
    config = default.get_config()
    config.eval.distance = "euclidean"
    config.data.target.protocol = protocol
    splits = DatasetSplits((), query, gallery)
    off = evaluate.evaluate(config, None, None, splits, None, all_protocols=True)
    config.eval.camera_normalise = True
    on = evaluate.evaluate(config, None, None, splits, None, all_protocols=True)
    assert off["rank1"] == 0.0 and off["mAP"] == pytest.approx(0.5) and "camera_normalised" not in off
    assert on["rank1"] == 1.0 and on["mAP"] == pytest.approx(1.0) and on["camera_normalised"] == 1.0
    if protocol == "mars":
        # The include_query gallery is built from the same normalised features: q's own copy is junk.
        assert off["include_query/rank1"] == 0.0 and on["include_query/rank1"] == 1.0
    # Off is exactly the evaluation without the option.
    plain = protocols.flatten(evaluators.get(protocol)(evaluators.ProtocolInputs(
        q, g, query, gallery, distance=EUCLID, max_rank=config.eval.max_rank)))
    assert {k: v for k, v in off.items() if k != "extract_sec"} == plain


def test_evaluate_splits_camera_normalise_per_split():
    query, gallery, q, g = _camera_bias_case()
    feats = {t.frames: x for t, x in zip(query + gallery, np.concatenate([q, g]))}
    split = DatasetSplits((), query, gallery)

    def run(on):
        return protocols.evaluate_splits(lambda s: split, lambda ts: np.stack([feats[t.frames] for t in ts]),
                                         distance=EUCLID, max_rank=3, split_ids=[0], camera_normalise=on)
    assert run(False).mean["rank1"] == 0.0 and run(True).mean["rank1"] == 1.0


def test_per_query_outcomes_by_hand():
    # q0 (pid 1) finds its match first, q1 (pid 2) second; q2 (pid 3) has none in the gallery.
    query = [_t("q0", 1, 0), _t("q1", 2, 0), _t("q2", 3, 0)]
    gallery = [_t("g0", 1, 1), _t("g1", 4, 1), _t("g2", 2, 1)]
    distmat = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.4], [0.5, 0.6, 0.7]], np.float32)
    result = protocols.rank(distmat, query, gallery)
    out = protocols.per_query(result, query, "target")
    assert out == {"format": protocols.PER_QUERY_FORMAT, "protocol": "target", "query": ["1/0/q0.jpg", "2/0/q1.jpg", "3/0/q2.jpg"],
                   "first_match_rank": [0, 2, -1], "average_precision": [1.0, pytest.approx(1 / 3), None]}
    with pytest.raises(ValueError, match="3 ranked queries for 2 query tracklets"):
        protocols.per_query(result, query[:2], "target")
