"""`--mode=diagnose`: why a model does or does not transfer, measured on a trained checkpoint.

Writes <workdir>/diagnostics/diagnostics.json and diagnostics.png (the folder replaced whole, utils/atomic.py):

  domain_probe     held-out accuracy of a linear classifier telling source from target tracklet
                   embeddings (0.5 = the domains are indistinguishable to a linear probe)
  camera_probe     held-out accuracy of a linear classifier predicting the target camera from the
                   embedding, next to the majority-class rate: how much camera the embedding carries
  teacher_clusters NMI and purity of the teacher's k-means clusters on target batches of the training
                   size (with the step's camera centring when it is on) against the true identities
  whole_set_clusters  NMI and purity (over the clustered tracklets) of plus's per-epoch clustering
                   (plus.* settings: DBSCAN on Jaccard distances or k-means, camera-normalised when
                   on) of the teacher's features of the whole target training set, with the outlier
                   share and the number of clusters next to the number of identities
  camera_pairs     rank-1 of queries from camera a against the gallery tracklets of camera b (a ≠ b)
  ranking          R-1 / mAP of the test split as evaluated, and with each camera's mean embedding
                   subtracted (a label-free, test-time step) — the gap between the two is camera bias

Target identity labels serve this report only; nothing here feeds training or model selection.
Embeddings are the evaluation features (BN-neck, eval-mode) of evaluation/features.py.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from PIL import Image, ImageDraw

from svreid_jax import builders, clustering, ops, parallel
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import features, protocols
from svreid_jax.utils import atomic
from svreid_jax.variants import plus, terms


# ---------------------------------------------------------------------------------------------
# Measures (pure functions of arrays)


def linear_probe(x: np.ndarray, labels: np.ndarray, *, seed: int = 0, holdout: float = 0.5, steps: int = 300,
                 l2: float = 1e-3) -> dict[str, float]:
    """Held-out accuracy of a softmax-regression probe on standardised features.

    x [N, D] float, labels [N] int. Half of each class (by `holdout`) is held out; the probe trains on
    the rest with Adam (full batch, `steps` steps, L2 `l2`). Returns {'accuracy', 'chance'} where chance
    is the majority class's share of the held-out items.
    """
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels)
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"linear_probe needs at least 2 classes, got {len(classes)}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(y == c))
        test[members[:int(round(holdout * len(members)))]] = True
    train = ~test
    if not train.any() or not test.any():
        raise ValueError("linear_probe: too few items to hold some out")
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mean) / std
    w = jnp.zeros((z.shape[1], len(classes)), jnp.float32)
    b = jnp.zeros((len(classes),), jnp.float32)
    tx = optax.adam(0.05)
    zt, yt = jnp.asarray(z[train]), jnp.asarray(y[train])

    def loss(params):
        logits = zt @ params[0] + params[1]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yt)) + l2 * jnp.sum(params[0] ** 2)

    @jax.jit
    def fit(params):
        def body(_, carry):
            p, s = carry
            updates, s = tx.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, updates), s
        return jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0]

    w, b = fit((w, b))
    predicted = np.asarray(jnp.argmax(jnp.asarray(z[test]) @ w + b, axis=-1))
    accuracy = float(np.mean(predicted == y[test]))
    chance = float(np.max(np.bincount(y[test], minlength=len(classes))) / test.sum())
    return {"accuracy": accuracy, "chance": chance}


def cluster_agreement(assign: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """NMI (mutual information over the arithmetic mean of the two entropies, in nats) and purity
    (share of items whose cluster's majority label is their own) of a clustering against labels."""
    assign, labels = np.asarray(assign), np.asarray(labels)
    _, a = np.unique(assign, return_inverse=True)
    _, l = np.unique(labels, return_inverse=True)
    n = len(a)
    joint = np.zeros((a.max() + 1, l.max() + 1))
    np.add.at(joint, (a, l), 1.0)
    p = joint / n
    pa, pl = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / (pa[:, None] * pl[None, :])[nz])))
    ha = float(-np.sum(pa[pa > 0] * np.log(pa[pa > 0])))
    hl = float(-np.sum(pl[pl > 0] * np.log(pl[pl > 0])))
    denominator = (ha + hl) / 2
    nmi = 1.0 if denominator == 0 else mi / denominator
    purity = float(joint.max(axis=1).sum() / n)
    return {"nmi": nmi, "purity": purity}


def camera_pair_rank1(distmat: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> tuple[np.ndarray, np.ndarray]:
    """(rank1 [C, C], queries [C, C]): entry (a, b) is the rank-1 rate of camera-a queries ranked against
    the gallery tracklets of camera b only, over the queries with a true match there; NaN where there
    is none, and on the diagonal (there every true match is same-camera junk). Cameras 0..C−1."""
    d = np.asarray(distmat)
    q_pids, g_pids, q_cams, g_cams = map(np.asarray, (q_pids, g_pids, q_cams, g_cams))
    num_cams = int(max(q_cams.max(), g_cams.max())) + 1
    hits = np.zeros((num_cams, num_cams))
    counts = np.zeros((num_cams, num_cams))
    for i in range(len(q_pids)):
        for b in range(num_cams):
            if b == q_cams[i]:
                continue
            in_b = np.flatnonzero(g_cams == b)
            if not np.any(g_pids[in_b] == q_pids[i]):
                continue
            nearest = in_b[np.argmin(d[i, in_b])]
            counts[q_cams[i], b] += 1
            hits[q_cams[i], b] += g_pids[nearest] == q_pids[i]
    with np.errstate(invalid="ignore"):
        rate = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return rate, counts


# ---------------------------------------------------------------------------------------------
# The mode


def _subset(tracklets: Sequence[Tracklet], limit: int, rng: np.random.Generator) -> list[Tracklet]:
    index = np.sort(rng.permutation(len(tracklets))[:limit])
    return [tracklets[i] for i in index]


def teacher_clusters(config, teacher_features: np.ndarray, pids: np.ndarray, camids: np.ndarray, *,
                     num_batches: int = 20, seed: int = 0) -> dict[str, float]:
    """Mean NMI / purity of k-means (the step's: terms.teacher_clusters, adaptation.kmeans_iters, camera centring)
    on random batches of batch.target_size target embeddings, against their identities."""
    size = min(config.batch.target_size, len(pids))
    rng = np.random.default_rng(seed)
    scores = []
    for k in range(num_batches):
        rows = rng.choice(len(pids), size=size, replace=False)
        x = jnp.asarray(teacher_features[rows])
        if config.adaptation.camera_centred:
            x = ops.camera_centred(x, jnp.asarray(camids[rows]), keep_singletons=True, normalise_after=True)
        x = ops.l2_normalise(x)
        _, assign = clustering.kmeans(jax.random.PRNGKey(seed * 1000 + k), x,
                                      min(terms.teacher_clusters(config), size), config.adaptation.kmeans_iters)
        scores.append(cluster_agreement(np.asarray(assign), pids[rows]))
    return {key: float(np.mean([s[key] for s in scores])) for key in ("nmi", "purity")}


def whole_set_clusters(config, teacher_features: np.ndarray, pids: np.ndarray, camids: np.ndarray) -> dict[str, float]:
    """plus's clustering of a whole split's teacher features [N, D] against the identities [N]: NMI and
    purity over the clustered tracklets, the outlier share, the cluster and identity counts."""
    raw = plus.cluster_features(config, teacher_features, camids, epoch=0)
    clustered = raw >= 0
    agreement = (cluster_agreement(raw[clustered], pids[clustered]) if clustered.any()
                 else {"nmi": float("nan"), "purity": float("nan")})
    return {**agreement, "outliers": float(np.mean(~clustered)), "clusters": int(len(np.unique(raw[clustered]))),
            "identities": int(len(np.unique(pids)))}


def _ranking_summary(q, g, query, gallery, distance: protocols.DistanceSpec) -> dict[str, float]:
    metrics = protocols.summarize(protocols.rank(protocols.distances(q, g, distance), query, gallery))
    return {"rank1": metrics["rank1"], "mAP": metrics["mAP"]}


def run_diagnostics(config, workdir: str, *, points: int = 400) -> dict:
    """Measure the checkpoint of `workdir` (see the module docstring); return what diagnostics.json holds."""
    mesh = parallel.data_mesh()
    student_model, student, ckpt = builders.restore_variables(config, workdir, mesh)
    teacher_config = config.copy_and_resolve_references()
    with teacher_config.unlocked():
        teacher_config.eval.use_teacher = True
    _, teacher, _ = builders.restore_variables(teacher_config, workdir, mesh)
    source, target = builders.load_datasets(config, workdir)
    rng = np.random.default_rng(config.seed)
    src = _subset(source.train, points, rng)
    tgt = _subset(target.train, points, rng)

    def embed(variables, tracklets, temporal=None):
        return features.tracklet_features(config, student_model, variables, tracklets, mesh, temporal=temporal)

    src_feats, tgt_feats = embed(student, src), embed(student, tgt)
    domain = linear_probe(np.concatenate([src_feats, tgt_feats]),
                          np.r_[np.zeros(len(src), int), np.ones(len(tgt), int)], seed=config.seed)
    tgt_cams = np.array([t.camid for t in tgt])
    camera = (linear_probe(tgt_feats, tgt_cams, seed=config.seed) if len(np.unique(tgt_cams)) > 1
              else {"accuracy": float("nan"), "chance": 1.0})
    tgt_teacher = embed(teacher, tgt)
    clusters = teacher_clusters(config, tgt_teacher, np.array([t.pid for t in tgt]), tgt_cams, seed=config.seed)
    # plus's clips for plus's clustering (plus.cluster_temporal; the evaluation's when empty).
    whole = whole_set_clusters(config, embed(teacher, tuple(target.train), config.plus.cluster_temporal or None),
                               np.array([t.pid for t in target.train]),
                               np.array([t.camid for t in target.train]))

    query, gallery = tuple(target.query), tuple(target.gallery)
    test_feats = embed(student, query + gallery)
    q, g = test_feats[:len(query)], test_feats[len(query):]
    distance = protocols.DistanceSpec.from_config(config)
    q_pids, q_cams = protocols.labels(query)
    g_pids, g_cams = protocols.labels(gallery)
    pair_rank1, pair_queries = camera_pair_rank1(np.asarray(protocols.distances(q, g, distance)), q_pids, g_pids,
                                                 q_cams, g_cams)
    centred = np.concatenate(protocols.camera_normalised(q, g, query, gallery))
    report = {
        "checkpoint": {"directory": ckpt.directory, "step": ckpt.step},
        "domain_probe": domain,
        "camera_probe": camera,
        "teacher_clusters": clusters,
        "whole_set_clusters": whole,
        "camera_pairs": {"rank1": _nan_to_none(pair_rank1), "queries": pair_queries.astype(int).tolist()},
        "ranking": {"as_evaluated": _ranking_summary(q, g, query, gallery, distance),
                    "camera_centred": _ranking_summary(centred[:len(query)], centred[len(query):], query, gallery,
                                                       distance)},
        "points": {"source": len(src), "target": len(tgt)},
    }
    out_dir = os.path.join(workdir, "diagnostics")
    write_report(report, out_dir)
    logging.info("wrote %s", out_dir)
    print(summary_lines(report), flush=True)
    return report


def write_report(report: dict, out_dir: str) -> None:
    """diagnostics.json and diagnostics.png (`draw_report`) into `out_dir`, replaced as one folder
    (utils/atomic.py): a failed write leaves the previous report whole, never a new diagnostics.json
    beside an old diagnostics.png."""
    image = draw_report(report)
    with protocols.writing(out_dir), atomic.replaced_directory(out_dir) as staging:
        atomic.write_json(os.path.join(staging, "diagnostics.json"), report)
        image.save(os.path.join(staging, "diagnostics.png"))


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in a]


def summary_lines(report: dict) -> str:
    r, w = report["ranking"], report["whole_set_clusters"]
    return "\n".join([
        f"domain probe accuracy {report['domain_probe']['accuracy']:.3f} (0.5 = indistinguishable)",
        f"camera probe accuracy {report['camera_probe']['accuracy']:.3f} (majority class {report['camera_probe']['chance']:.3f})",
        f"teacher clusters NMI {report['teacher_clusters']['nmi']:.3f}, purity {report['teacher_clusters']['purity']:.3f}",
        f"whole-set clusters NMI {w['nmi']:.3f}, purity {w['purity']:.3f}, outliers {w['outliers']:.3f}, "
        f"{w['clusters']} clusters for {w['identities']} identities",
        f"R-1 {100 * r['as_evaluated']['rank1']:.1f} / mAP {100 * r['as_evaluated']['mAP']:.1f} as evaluated; "
        f"{100 * r['camera_centred']['rank1']:.1f} / {100 * r['camera_centred']['mAP']:.1f} with camera-centred features",
    ])


def draw_report(report: dict, cell: int = 48) -> Image.Image:
    """A PNG: the camera-pair rank-1 matrix (darker = higher, grey = no pair) and the probe/cluster bars."""
    matrix = report["camera_pairs"]["rank1"]
    num_cams = len(matrix)
    left, top = 150, 40
    width = left + num_cams * cell + 320
    height = top + max(num_cams * cell, 6 * 30) + 60
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), "rank-1, query camera (rows) vs gallery camera (columns)", fill=(0, 0, 0))
    for a in range(num_cams):
        draw.text((left - 30, top + a * cell + cell // 2 - 6), f"c{a}", fill=(0, 0, 0))
        draw.text((left + a * cell + cell // 2 - 6, top + num_cams * cell + 4), f"c{a}", fill=(0, 0, 0))
        for b in range(num_cams):
            v = matrix[a][b]
            shade = (200, 200, 200) if v is None else tuple(int(255 - 200 * v) for _ in range(3))
            box = [left + b * cell, top + a * cell, left + (b + 1) * cell - 2, top + (a + 1) * cell - 2]
            draw.rectangle(box, fill=shade, outline=(150, 150, 150))
            if v is not None:
                draw.text((box[0] + 6, box[1] + cell // 2 - 6), f"{100 * v:.0f}",
                          fill=(255, 255, 255) if v > 0.5 else (0, 0, 0))
    bars = [("domain probe", report["domain_probe"]["accuracy"]),
            ("camera probe", report["camera_probe"]["accuracy"]),
            ("teacher NMI", report["teacher_clusters"]["nmi"]),
            ("teacher purity", report["teacher_clusters"]["purity"]),
            ("whole-set NMI", report["whole_set_clusters"]["nmi"]),
            ("whole-set purity", report["whole_set_clusters"]["purity"])]
    x0 = left + num_cams * cell + 30
    for i, (name, value) in enumerate(bars):
        y = top + i * 30
        draw.text((x0, y), name, fill=(0, 0, 0))
        v = 0.0 if value is None or np.isnan(value) else float(value)
        draw.rectangle([x0 + 110, y, x0 + 110 + int(160 * v), y + 14], fill=(60, 110, 180))
        draw.text((x0 + 115 + int(160 * v), y), f"{v:.2f}", fill=(0, 0, 0))
    return image
