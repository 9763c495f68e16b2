"""The evaluation modes of the command line (eval, visualize, extract), after ONE micro training run.

Also in-process: --mode=extract's features equal a fresh extraction from the restored checkpoint, and
eval.one_checkpoint_all_splits on an iLIDS-VID-layout fixture reports mean ± std over its splits,
labelled transductive.
"""
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import child_processes
from configs import demo
from svreid_jax import builders
from svreid_jax.data import datasets
from svreid_jax.evaluation import evaluate, extract, features, protocols

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/demo.py:paper,micro"


def _run(workdir, *extra, env=None, timeout=600):
    cmd = [sys.executable, "-m", "svreid_jax.main", CONFIG, f"--workdir={workdir}", *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    done = child_processes.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def workdir(micro_run):
    """The suite's one micro training run (tests/conftest.py), shared by every test here."""
    return micro_run


@pytest.fixture(scope="module")
def folder_root(workdir, tmp_path_factory):
    """Your own tracklets: a few demo target tracklets copied into <pid>/<camid>/<tracklet>/ folders."""
    target = datasets.load("mars", str(workdir / "data" / "target"))
    root = tmp_path_factory.mktemp("mine")
    for k, t in enumerate(target.query[:3] + target.gallery[:4]):
        folder = root / str(t.pid) / str(t.camid) / f"walk_{k}"
        folder.mkdir(parents=True)
        for i, frame in enumerate(t.frames):
            shutil.copy(frame, folder / f"{i + 1:04d}.jpg")
    return root


def test_eval_mode_writes_every_mars_convention(workdir):
    done = _run(workdir, "--mode=eval")
    assert "| svreid → mars | R-1 | R-5 | R-10 | R-20 | mAP |" in done.stdout
    report = json.load(open(workdir / "eval_results.json", encoding="utf-8"))
    assert list(report["protocols"]) == ["exclude_query", "include_query", "all"]
    assert report["checkpoint"]["step"] == 2 and report["distance"] == "cosine"
    md = open(workdir / "eval_results.md", encoding="utf-8").read()
    assert "| include_query |" in md and "| all |" in md and "step 2" in md
    # The same checkpoint and protocol as the end of training: the same numbers.
    final = json.load(open(workdir / "results.json"))
    for key in ("rank1", "rank5", "mAP", "include_query/mAP"):
        assert report["metrics"][key] == pytest.approx(final[key], abs=1e-9), key
    # Each query's outcome under the primary protocol, written by training and by --mode=eval alike,
    # gives back the run's R-1 and mAP.
    trained = json.load(open(workdir / "per_query.json", encoding="utf-8"))
    assert json.load(open(workdir / "eval_per_query.json", encoding="utf-8")) == trained
    assert trained["format"] == protocols.PER_QUERY_FORMAT and trained["protocol"] == "exclude_query"
    query = datasets.load("mars", str(workdir / "data" / "target")).query
    assert trained["query"] == [protocols.query_key(t) for t in query]
    ranks, ap = np.array(trained["first_match_rank"]), trained["average_precision"]
    assert len(ranks) == len(ap) == len(query)
    matched = ranks >= 0
    assert matched.sum() == final["num_valid_queries"]
    assert np.mean(ranks[matched] == 0) == pytest.approx(final["rank1"], abs=1e-12)
    assert [a is None for a in ap] == list(~matched)
    assert np.mean([a for a in ap if a is not None]) == pytest.approx(final["mAP"], abs=1e-9)


def test_visualize_mode_writes_pngs(workdir):
    done = _run(workdir, "--mode=visualize", "--config.eval.visualize_queries=2")
    for name in ("ranked_top10.png", "pca_domains.png"):
        path = workdir / "visualize" / name
        assert path.stat().st_size > 0 and str(path) in done.stdout
        with Image.open(path) as im:
            im.load()
            assert im.width > 400 and im.height > 300
    with Image.open(workdir / "visualize" / "ranked_top10.png") as im:
        assert im.size == (1794, 2 * 12 + 44 + 2 * 136 + 12)  # two query rows of 10 + 1 cells


def test_extract_mode_writes_consistent_files(workdir, folder_root):
    done = _run(workdir, "--mode=extract", f"--data={folder_root}")
    out = workdir / "extract"
    assert "features.npy" in done.stdout
    feats = np.load(out / "features.npy")
    rows = list(csv.DictReader(open(out / "index.csv", encoding="utf-8")))
    info = json.load(open(out / "extract.json"))
    assert feats.dtype == np.float32 and feats.shape == (7, info["feature_dim"]) and np.all(np.isfinite(feats))
    assert list(rows[0]) == list(extract.INDEX_COLUMNS)
    assert [int(r["index"]) for r in rows] == list(range(7))
    for r in rows:
        pid, camid, name = r["tracklet"].split("/")
        assert (int(r["pid"]), int(r["camid"])) == (int(pid), int(camid))
        frames = sorted(os.listdir(folder_root / r["tracklet"]))
        assert int(r["num_frames"]) == len(frames)
        assert r["first_frame"] == str(folder_root / r["tracklet"] / frames[0])
    assert info["num_tracklets"] == 7 and info["checkpoint"]["step"] == 2

    # In process: the restored checkpoint gives the same features for the index's tracklets.
    config = demo.get_config("paper,micro")
    model, variables, _ = builders.restore_variables(config, str(workdir))
    again = features.tracklet_features(config, model, variables, extract.read_folder(str(folder_root)).tracklets)
    np.testing.assert_allclose(again, feats, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="--data"):
        extract.run_extract(config, str(workdir), "")


def _ilidsvid_fixture(root, workdir, num_splits=3):
    """iLIDS-VID layout with 4 persons (frames borrowed from the demo target) and `num_splits` split rows."""
    import scipy.io

    target = datasets.load("mars", str(workdir / "data" / "target"))
    people = {}
    for t in target.query + target.gallery:
        people.setdefault(t.pid, []).append(t)
    pairs = [ts[:2] for pid, ts in sorted(people.items()) if pid > 0 and len(ts) >= 2][:4]
    assert len(pairs) == 4
    for n, pair in enumerate(pairs):
        for cam, t in zip(("cam1", "cam2"), pair):
            folder = root / "i-LIDS-VID" / "sequences" / cam / f"person{n + 1:03d}"
            folder.mkdir(parents=True)
            for i, frame in enumerate(t.frames):
                shutil.copy(frame, folder / f"{cam}_person{n + 1:03d}_{i + 1:05d}.jpg")
    rng = np.random.default_rng(0)
    rows = np.stack([rng.permutation(4) + 1 for _ in range(num_splits)]).astype(np.float64)
    (root / "train-test people splits").mkdir()
    scipy.io.savemat(str(root / "train-test people splits" / "train_test_splits_ilidsvid.mat"), {"ls_set": rows})


def test_eval_one_checkpoint_all_splits_reports_mean_and_std_as_transductive(workdir, tmp_path, monkeypatch):
    _ilidsvid_fixture(tmp_path / "ilids", workdir)
    run = tmp_path / "run"
    shutil.copytree(workdir / "checkpoints", run / "checkpoints")
    config = demo.get_config("paper,micro")
    config.data.demo = False
    config.data.target.name = "ilidsvid"
    config.data.target.root = str(tmp_path / "ilids")
    config.eval.one_checkpoint_all_splits = True
    # The fixture holds 3 splits, not the real 10.
    monkeypatch.setattr(protocols, "evaluate_splits",
                        _with_split_ids(protocols.evaluate_splits, range(3)))
    metrics = evaluate.evaluate_checkpoint(config, str(run))
    assert set(metrics) >= {"rank1", "mAP", "std/rank1", "split_0/rank1", "split_2/mAP"}
    per_split = [metrics[f"split_{s}/rank1"] for s in range(3)]
    assert metrics["rank1"] == pytest.approx(np.mean(per_split))
    assert metrics["std/rank1"] == pytest.approx(np.std(per_split, ddof=1))
    md = open(run / "eval_results.md", encoding="utf-8").read()
    assert "| one checkpoint on 3 splits, transductive: mean ± std |" in md and "| split_2 |" in md
    report = json.load(open(run / "eval_results.json", encoding="utf-8"))
    assert set(report["std"]) >= {"rank1", "mAP"}
    config.data.target.name = "mars"
    with pytest.raises(ValueError, match="reader takes a split_id"):
        evaluate.evaluate_checkpoint(config, str(run))


def _with_split_ids(fn, split_ids):
    def wrapped(*args, **kwargs):
        kwargs["split_ids"] = split_ids
        return fn(*args, **kwargs)
    return wrapped


@pytest.mark.slow  # about 15 s: clusters the target; the default stage keeps its 15-minute budget
def test_diagnose_mode_writes_the_report(workdir):
    done = _run(workdir, "--mode=diagnose")
    report = json.load(open(workdir / "diagnostics" / "diagnostics.json", encoding="utf-8"))
    assert (workdir / "diagnostics" / "diagnostics.png").stat().st_size > 0
    assert 0.0 <= report["domain_probe"]["accuracy"] <= 1.0
    assert 0.0 <= report["teacher_clusters"]["nmi"] <= 1.0 and 0.0 < report["teacher_clusters"]["purity"] <= 1.0
    cams = len(report["camera_pairs"]["rank1"])
    assert cams >= 2 and all(report["camera_pairs"]["rank1"][c][c] is None for c in range(cams))
    # The run's own evaluation and the report's 'as evaluated' row are the same ranking.
    evaluated = json.load(open(workdir / "results.json", encoding="utf-8"))
    assert report["ranking"]["as_evaluated"]["rank1"] == pytest.approx(evaluated["rank1"])
    assert "domain probe accuracy" in done.stdout
    whole = report["whole_set_clusters"]
    assert whole["identities"] >= 2 and 0.0 <= whole["outliers"] <= 1.0 and "whole-set clusters NMI" in done.stdout


@pytest.mark.slow  # ten micro trainings: minutes on CPU (over 10 on 2 busy cores)
@pytest.mark.timeout(1800)
def test_splits_mode_trains_ten_models_and_aggregates(workdir, tmp_path):
    """The standard protocol's command on the micro demo source and a 10-split iLIDS-VID-layout target:
    ten runs, each in its own workdir, and their mean ± std; run again, it only reads them back."""
    _ilidsvid_fixture(tmp_path / "ilids", workdir, num_splits=10)
    run = tmp_path / "splits"
    args = ["--mode=splits", "--config.data.demo=False", f"--config.data.source.root={workdir / 'data' / 'source'}",
            "--config.data.target.name=ilidsvid", f"--config.data.target.root={tmp_path / 'ilids'}",
            "--config.data.target.protocol=standard", "--config.train.num_epochs=1",
            # Each split's target holds 4 training tracklets: a target batch of 4 clips, one per tracklet.
            "--config.batch.target_size=4"]
    # The ten runs compile the same programs: XLA's persistent cache makes splits 1–9 cheap.
    cache = dict(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    done = _run(run, *args, env=cache, timeout=1700)
    per_split = []
    for k in range(10):
        final = json.load(open(run / f"split_{k}" / "results.json", encoding="utf-8"))
        assert final["num_valid_queries"] == 2  # the two test persons of split k, queried in camera 1
        assert os.listdir(run / f"split_{k}" / "checkpoints")
        per_split.append(final)
    report = json.load(open(run / "splits_results.json", encoding="utf-8"))
    assert report["split_ids"] == list(range(10))
    for key in ("rank1", "mAP"):
        values = [m[key] for m in per_split]
        assert report["mean"][key] == pytest.approx(np.mean(values))
        assert report["std"][key] == pytest.approx(np.std(values, ddof=1))
    md = open(run / "splits_results.md", encoding="utf-8").read()
    assert "| mean ± std (10 splits, one model each) |" in md and "| split_9 |" in md
    assert "| mean ± std (10 splits, one model each) |" in done.stdout
    again = _run(run, *args, env=cache)
    assert again.stderr.count("already done") == 10
    assert json.load(open(run / "splits_results.json", encoding="utf-8")) == report
