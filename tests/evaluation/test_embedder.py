"""svreid_jax.Embedder, --mode=export and --mode=extract's layouts and atomic writes, after ONE micro run.

The Embedder's features are --mode=extract's; an export gives the checkpoint's embeddings back at any
batch size without the config or the checkpoint; clips and frame paths agree; a failed write leaves
the previous outputs whole; every refusal is one line naming the folder or file.
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

import svreid_jax
from configs import demo
from svreid_jax import builders
from svreid_jax.data import datasets, pipeline
from svreid_jax.evaluation import embedder as embedder_lib
from svreid_jax.evaluation import export, extract, features
from svreid_jax.evaluation.embedder import Embedder, ExportError
from svreid_jax.utils import atomic
from svreid_jax.utils.checkpointing import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/demo.py:paper,micro"
TOL = 1e-5


def _main(workdir, *extra, check=True):
    cmd = [sys.executable, "-m", "svreid_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def workdir(micro_run):
    """The suite's one micro training run (tests/conftest.py)."""
    return micro_run


@pytest.fixture(scope="session")
def target_tracklets(workdir):
    """Seven demo target tracklets (frame paths), the frames of some long enough for several clips."""
    target = datasets.load("mars", str(workdir / "data" / "target"))
    return list(target.query[:3] + target.gallery[:4])


def _copy_frames(tracklet, folder):
    folder.mkdir(parents=True)
    for i, frame in enumerate(tracklet.frames):
        shutil.copy(frame, folder / f"{i + 1:04d}.jpg")


@pytest.fixture(scope="session")
def plain_root(target_tracklets, tmp_path_factory):
    """<root>/<tracklet>/*.jpg: no pid, no camera; names sort numerically (walk_2 before walk_10)."""
    root = tmp_path_factory.mktemp("plain")
    for k, t in enumerate(target_tracklets):
        _copy_frames(t, root / f"walk_{2 * k}")
    return root


@pytest.fixture(scope="session")
def labelled_root(target_tracklets, tmp_path_factory):
    """<root>/<pid>/<camid>/<tracklet>/*.jpg, the `folder` layout."""
    root = tmp_path_factory.mktemp("labelled")
    for k, t in enumerate(target_tracklets):
        _copy_frames(t, root / str(t.pid) / str(t.camid) / f"walk_{k}")
    return root


@pytest.fixture(scope="session")
def embedder(workdir):
    return Embedder.from_workdir(str(workdir))


@pytest.fixture(scope="session")
def export_dir(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "model"
    done = _main(workdir, "--mode=export", f"--out={out}")
    assert str(out) in done.stdout
    return out


def _paths(folder_tracklets):
    return [list(t.frames) for t in folder_tracklets.tracklets]


def test_import_is_cheap_and_embedder_is_exported():
    code = "import sys, svreid_jax; assert 'jax' not in sys.modules; print(svreid_jax.Embedder.__module__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "svreid_jax.evaluation.embedder"
    assert svreid_jax.Embedder is Embedder and "Embedder" in dir(svreid_jax)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        svreid_jax.Nothing  # noqa: B018


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_config_comes_back_from_the_checkpoint(embedder):
    expected = demo.get_config("paper,micro")
    expected.train.num_epochs = 1  # as the run was trained
    assert embedder.config.optimizer.lr_milestones == tuple(expected.optimizer.lr_milestones)
    assert json.loads(embedder.config.to_json_best_effort()) == json.loads(expected.to_json_best_effort())
    assert embedder.clip_shape == (expected.eval.seq_len, expected.data.height, expected.data.width)
    assert embedder.batch_size == expected.eval.batch_size and embedder.source["step"] == 2


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_features_equal_extract_mode_on_the_plain_layout(workdir, plain_root, embedder):
    done = _main(workdir, "--mode=extract", f"--data={plain_root}")
    assert "features.npy" in done.stdout
    out = workdir / "extract"
    feats = np.load(out / "features.npy")
    rows = list(csv.DictReader(open(out / "index.csv", encoding="utf-8")))
    assert [r["tracklet"] for r in rows] == [f"walk_{2 * k}" for k in range(7)]
    assert all(r["pid"] == "" and r["camid"] == "" and r["split"] == "" for r in rows)
    assert [int(r["num_frames"]) for r in rows] == [len(os.listdir(plain_root / r["tracklet"])) for r in rows]
    hidden = [n for n in os.listdir(workdir) if n.startswith(".") and n != ".lock"]  # the workdir lock stays
    assert hidden == []
    data = extract.read_folder(str(plain_root))
    assert data.labelled == (False,) * 7 and [r["first_frame"] for r in rows] == [t.frames[0] for t in data.tracklets]
    mine = embedder(_paths(data))
    assert mine.dtype == np.float32 and mine.shape == feats.shape == (7, embedder.embedding_dim)
    np.testing.assert_allclose(mine, feats, rtol=0, atol=TOL)


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_both_layouts_read_the_same_tracklets(plain_root, labelled_root, target_tracklets, embedder):
    labelled = extract.read_folder(str(labelled_root))
    assert labelled.labelled == (True,) * 7
    rows = extract.index_rows(labelled)
    assert {(int(r["pid"]), int(r["camid"])) for r in rows} == {(t.pid, t.camid) for t in target_tracklets}
    plain = extract.read_folder(str(plain_root))
    by_name = {os.path.basename(os.path.dirname(t.frames[0])): t for t in plain.tracklets}
    # Tracklet k is walk_k under its pid/camid folders and walk_{2k} in the plain root: the same frames.
    pairs = []
    for t in labelled.tracklets:
        k = int(os.path.basename(os.path.dirname(t.frames[0])).removeprefix("walk_"))
        pairs.append((t, by_name[f"walk_{2 * k}"]))
    assert all(len(a) == len(b) for a, b in pairs)
    np.testing.assert_array_equal(embedder([list(a.frames) for a, _ in pairs]),
                                  embedder([list(b.frames) for _, b in pairs]))


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_clips_and_frame_paths_agree(target_tracklets, embedder):
    # restricted_begin cuts one clip per tracklet: its embedding is the tracklet's feature.
    clips = np.concatenate([b["video"][b["tracklet"] >= 0] for b in pipeline.eval_clips(
        target_tracklets, spec=embedder.spec, batch_size=4, method=embedder.config.eval.temporal)])
    assert clips.dtype == np.uint8 and clips.shape == (7, *embedder.clip_shape, 3)
    np.testing.assert_allclose(embedder(clips), embedder([list(t.frames) for t in target_tracklets]),
                               rtol=0, atol=TOL)
    # A Tracklet is taken as it is, and batch sizes do not change the features.
    np.testing.assert_allclose(embedder(target_tracklets, batch_size=3), embedder(clips), rtol=0, atol=TOL)
    assert embedder(clips[:0]).shape == (0, embedder.embedding_dim) == embedder([]).shape


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_the_teacher_is_what_evaluation_uses(workdir, target_tracklets):
    teacher = Embedder.from_workdir(str(workdir), use_teacher=True)
    config = demo.get_config("paper,micro")
    config.eval.use_teacher = True
    model, variables, info = builders.restore_variables(config, str(workdir))
    assert info.teacher and teacher.source["teacher"]
    expected = features.tracklet_features(config, model, variables, target_tracklets)
    np.testing.assert_allclose(teacher(target_tracklets), expected, rtol=0, atol=TOL)


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_export_round_trip_at_two_batch_sizes(export_dir, embedder, target_tracklets):
    assert sorted(os.listdir(export_dir)) == sorted(embedder_lib.EXPORT_FILES)
    meta = json.load(open(export_dir / "config.json", encoding="utf-8"))
    assert meta["input"] == {"shape": ["b", 4, 32, 16, 3], "clip_len": 4, "height": 32, "width": 16,
                             "channels": "RGB", "dtype": "uint8"}
    assert meta["embedding_dim"] == embedder.embedding_dim and meta["dtype"] == "float32"
    assert "cpu" in meta["platforms"] and "cuda" in meta["platforms"] and meta["step"] == 2
    loaded = Embedder.from_export(str(export_dir))
    assert loaded.model is None and loaded.embedding_dim == embedder.embedding_dim
    clips = np.random.default_rng(0).integers(0, 256, (7, *embedder.clip_shape, 3), dtype=np.uint8)
    expected = embedder(clips)
    for batch_size in (1, 3):  # 7 clips: the last batch of 3 is padded
        np.testing.assert_allclose(loaded(clips, batch_size=batch_size), expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(loaded(target_tracklets), embedder(target_tracklets), rtol=0, atol=TOL)


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_export_reads_only_its_folder(export_dir, tmp_path, embedder):
    # Moved away from the workdir and its configs, under another name: it still loads.
    moved = tmp_path / "elsewhere"
    shutil.copytree(export_dir, moved)
    clips = np.zeros((2, *embedder.clip_shape, 3), np.uint8)
    np.testing.assert_allclose(Embedder.from_export(str(moved))(clips), embedder(clips), rtol=0, atol=TOL)


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_flip_average_is_inside_the_export(workdir, tmp_path):
    config = demo.get_config("paper,micro")
    config.eval.flip_average = True
    flipped = Embedder.from_config(config, str(workdir), batch_size=2)
    export.export_embedder(flipped, str(tmp_path / "flip"))
    clips = np.random.default_rng(1).integers(0, 256, (3, *flipped.clip_shape, 3), dtype=np.uint8)
    mirrored = clips[:, :, :, ::-1]
    np.testing.assert_allclose(flipped(clips), flipped(mirrored), rtol=0, atol=TOL)
    np.testing.assert_allclose(Embedder.from_export(str(tmp_path / "flip"))(clips), flipped(clips), rtol=0, atol=TOL)


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_extract_writes_are_all_or_nothing(workdir, labelled_root, plain_root, embedder, monkeypatch):
    config = demo.get_config("paper,micro")
    out = workdir / "extract_atomic"
    extract.extract_folder(config, embedder.model, embedder.variables, str(labelled_root), str(out))
    before = {name: (out / name).read_bytes() for name in ("features.npy", "index.csv", "extract.json")}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extract, "write_index", fail)  # features.npy is written, index.csv fails
    with pytest.raises(OSError, match="No space left"):
        extract.extract_folder(config, embedder.model, embedder.variables, str(plain_root), str(out))
    assert {name: (out / name).read_bytes() for name in before} == before
    hidden = [n for n in os.listdir(workdir) if n.startswith(".") and n != ".lock"]  # the workdir lock stays
    assert hidden == []
    monkeypatch.undo()
    extract.extract_folder(config, embedder.model, embedder.variables, str(plain_root), str(out))
    rows = list(csv.DictReader(open(out / "index.csv", encoding="utf-8")))
    assert len(rows) == len(np.load(out / "features.npy")) and rows[0]["pid"] == ""


def test_replaced_directory_keeps_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic.replaced_directory(str(target)) as staging:
        open(os.path.join(staging, "a"), "w").write("old")
    rename = os.rename

    def refuse_staging(src, dst):
        if os.path.basename(src).startswith(".out.new-"):
            raise OSError("rename refused")
        rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", refuse_staging)
    with pytest.raises(OSError, match="rename refused"):
        with atomic.replaced_directory(str(target)) as staging:
            open(os.path.join(staging, "a"), "w").write("new")
    assert (target / "a").read_text() == "old" and os.listdir(tmp_path) == ["out"]


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_refusals_are_one_line(workdir, export_dir, tmp_path, embedder):
    empty = tmp_path / "untrained"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"^no checkpoint under .*untrained/checkpoints; train first"):
        Embedder.from_workdir(str(empty))
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        export.run_export(demo.get_config("paper,micro"), str(empty), str(tmp_path / "out"))
    assert not (empty / "checkpoints").exists() and not (tmp_path / "out").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"--out=.*busy exists, is not empty and holds no earlier export"):
        export.check_out_dir(str(busy))
    with pytest.raises(ExportError, match="is a file"):
        export.check_out_dir(str(busy / "notes.txt"))
    assert export.check_out_dir(str(export_dir)) == str(export_dir)  # an earlier export may be replaced

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    os.remove(broken / "model.safetensors")
    with pytest.raises(ExportError, match=r"broken: missing model\.safetensors; an export holds config\.json"):
        Embedder.from_export(str(broken))
    with pytest.raises(ExportError, match="is not a folder"):
        Embedder.from_export(str(tmp_path / "nowhere"))
    shutil.copy(export_dir / "model.safetensors", broken / "model.safetensors")
    (broken / "embed.stablehlo").write_bytes(b"not a flatbuffer")
    with pytest.raises(ExportError, match=r"embed\.stablehlo: not a jax\.export serialization"):
        Embedder.from_export(str(broken))

    wrong = tmp_path / "wrong"
    shutil.copytree(export_dir, wrong)
    flat = embedder_lib.flatten_variables(jax.device_get(embedder.variables))
    flat["params/bnneck/scale"] = flat["params/bnneck/scale"][:-1]
    safetensors.numpy.save_file(flat, str(wrong / "model.safetensors"))
    with pytest.raises(ExportError, match=r"tensor 'params/bnneck/scale' is float32\[63\], embed\.stablehlo takes "
                                          r"float32\[64\]"):
        Embedder.from_export(str(wrong))

    with pytest.raises(ValueError, match=r"clips must have shape \[N, 4, 32, 16, 3\]"):
        embedder(np.zeros((2, 4, 16, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="clips must be uint8"):
        embedder(np.zeros((2, 4, 32, 16, 3), np.float32))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        embedder(np.zeros((2, 4, 32, 16, 3), np.uint8), batch_size=0)
    with pytest.raises(TypeError, match="tracklet 1 is the single path"):
        embedder([["a.jpg"], "b.jpg"])


@pytest.mark.slow  # shares a trained micro run (about 50 s to make); the default stage keeps its 15-minute budget
def test_cli_export_errors_are_one_line(workdir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    done = _main(workdir, "--mode=export", f"--out={busy}", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"svreid_jax: export error: --out={busy} exists, is not empty and holds no earlier export (config.json "
        "of format svreid_jax.export); choose a new or empty folder")
    untrained = _main(tmp_path / "untrained", "--mode=export", f"--out={tmp_path / 'out'}", check=False)
    assert untrained.returncode == 1
    assert untrained.stderr.strip().splitlines()[-1].startswith("svreid_jax: checkpoint error: no checkpoint under ")
    assert "Traceback" not in untrained.stderr + done.stderr
