"""Packing into tfds array_record shards: records hold the original bytes, the packed splits give the
same batches as the folders byte for byte, the command line works, and TensorFlow is never imported."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from svreid_jax.data import datasets, decode, pack, pipeline
from svreid_jax.data.records import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = pipeline.ClipSpec(seq_len=4, height=12, width=6, flip=True)  # resized: exercises the bicubic path

# CCVID layout (clothes ids too): (tracklet dir, pid, clothes, frames, extension)
_LISTS = {
    "train.txt": [("session1/001_01", "001", "u1", 5, ".jpg"), ("session1/001_02", "001", "u1", 2, ".png"),
                  ("session3/001_03", "001", "u2", 7, ".jpg"), ("session2/002_01", "002", "u1", 3, ".png"),
                  ("session2/002_04", "002", "u3", 6, ".jpg"), ("session1/003_02", "003", "u1", 4, ".jpg")],
    "query.txt": [("session1/005_01", "005", "u1", 3, ".jpg"), ("session1/006_01", "006", "u2", 5, ".png")],
    "gallery.txt": [("session3/005_02", "005", "u2", 6, ".png"), ("session2/006_03", "006", "u2", 1, ".jpg"),
                    ("session1/007_05", "007", "u1", 4, ".jpg")],
}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(folder splits, packed directory) of a tiny CCVID tree of noisy 16×8 JPEG and PNG frames."""
    root = tmp_path_factory.mktemp("ccvid")
    rng = np.random.default_rng(0)
    for name, rows in _LISTS.items():
        with open(root / name, "w") as f:
            for tdir, pid, clothes, n, ext in rows:
                f.write(f"{tdir} {pid} {clothes}\n")
                os.makedirs(root / tdir)
                for i in range(n):
                    pixels = rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / tdir / f"{i + 1}{ext}", quality=90)
    folders = datasets.load("ccvid", str(root))
    directory = pack.pack("ccvid", str(root), str(tmp_path_factory.mktemp("packed")), progress=False)
    return folders, directory


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
            assert x[k].tobytes() == y[k].tobytes(), k


def test_records_hold_the_original_bytes(packed):
    folders, directory = packed
    assert directory.endswith(os.path.join("svreid_tracklets", "ccvid", "1.0.0"))
    splits = pack.load_packed(os.path.dirname(os.path.dirname(directory)))  # any ancestor with one packing
    info = pack.packed_info(directory)
    assert info["dataset"] == "ccvid" and info["options"] == {} and info["reader_counts"] is None
    for name in ("train", "query", "gallery"):
        mine, theirs = getattr(folders, name), getattr(splits, name)
        assert len(theirs) == len(mine) and theirs.split == name
        for i, (f, p) in enumerate(zip(mine, theirs)):
            assert (p.pid, p.camid, p.clothes_id, len(p)) == (f.pid, f.camid, f.clothes_id, len(f))
            record = theirs.record(i)
            assert record["split"] == name.encode() and record["index"] == i
            for k, path in enumerate(f.frames):
                assert theirs.frame_bytes(i, k) == open(path, "rb").read()
                assert record["frames"]["format"][k] == (b"jpeg" if path.endswith(".jpg") else b"png")
                assert record["frames"]["name"][k].decode() == os.path.relpath(path, info["root"])
    assert [t.clothes_id for t in splits.train] == [0, 0, 1, 2, 3, 4]


def test_packed_source_stream_matches_folders_byte_for_byte(packed):
    folders, directory = packed
    splits = pack.load_packed(directory)
    kw = dict(num_identities=2, num_instances=2, spec=SPEC, seed=3, num_threads=2)
    a, steps_a = pipeline.source_stream(folders.train, **kw)
    b, steps_b = pipeline.source_stream(splits.train, **kw)
    assert steps_a == steps_b
    batches = _take(b, 6)
    _assert_same_batches(_take(a, 6), batches)
    assert any(batch["video"].any() for batch in batches)
    t_a = pipeline.target_stream(folders.train[1:], batch_size=2, spec=SPEC, seed=1, num_threads=1)
    t_b = pipeline.target_stream(splits.train[1:], batch_size=2, spec=SPEC, seed=1, num_threads=1)  # a slice view
    _assert_same_batches(_take(t_a, 4), _take(t_b, 4))


@pytest.mark.parametrize("method", ["restricted_begin", "dense"])
def test_packed_eval_clips_match_folders_byte_for_byte(packed, method):
    folders, directory = packed
    splits = pack.load_packed(directory)
    for name in ("query", "gallery"):
        a = list(pipeline.eval_clips(getattr(folders, name), spec=SPEC, batch_size=3, method=method, num_threads=2))
        b = list(pipeline.eval_clips(getattr(splits, name), spec=SPEC, batch_size=3, method=method, num_threads=2))
        _assert_same_batches(a, b)


@pytest.mark.parametrize("method", ["restricted_begin", "dense"])
def test_query_and_gallery_joined_decode_like_the_folders(packed, method):
    """Evaluation reads query ∪ gallery as one sequence: joined packed splits (and a packed part beside
    a folder part) give the batches of the joined folder tuples, byte for byte."""
    folders, directory = packed
    splits = pack.load_packed(directory)
    expected = list(pipeline.eval_clips(pack.join(folders.query, folders.gallery), spec=SPEC, batch_size=3,
                                        method=method, num_threads=2))
    assert isinstance(pack.join(folders.query, folders.gallery), tuple)
    for joined in (pack.join(splits.query, splits.gallery), pack.join(folders.query, splits.gallery)):
        assert len(joined) == len(folders.query) + len(folders.gallery)
        assert joined[len(folders.query)] == splits.gallery[0] and joined[-1] == splits.gallery[-1]
        got = list(pipeline.eval_clips(joined, spec=SPEC, batch_size=3, method=method, num_threads=2))
        _assert_same_batches(expected, got)
    with pytest.raises(IndexError):
        pack.join(splits.query, splits.gallery)[len(folders.query) + len(folders.gallery)]


def test_packed_split_pickles_for_worker_processes(packed):
    folders, directory = packed
    view = pack.load_packed(directory).gallery[1:]
    clip = view.load_clip(0, [0, 0, 0, 0], 12, 6, True)  # a repeated frame decodes each time
    copy = pickle.loads(pickle.dumps(view))
    assert len(copy) == 2 and copy[1] == view[1]
    np.testing.assert_array_equal(copy.load_clip(0, [0, 0, 0, 0], 12, 6, True), clip)
    assert clip.tobytes() == decode.load_clip(folders.gallery[1].frames, [0] * 4, 12, 6, True).tobytes()


def test_empty_splits_and_reuse(tmp_path):
    tree = tmp_path / "mine" / "4" / "1" / "t"
    os.makedirs(tree)
    for i in range(3):
        Image.fromarray(np.full((4, 2, 3), i, np.uint8)).save(tree / f"{i}.png")
    out = str(tmp_path / "out")
    directory = pack.pack("folder", str(tmp_path / "mine"), out, {"split": "auto"}, progress=False)
    assert directory.endswith(os.path.join("folder", "1.0.0"))  # default options leave the name alone
    splits = pack.load_packed(directory)
    assert len(splits.train) == 1 and len(splits.query) == 0 and len(splits.gallery) == 0
    stamp = os.path.getmtime(os.path.join(directory, "dataset_info.json"))
    assert pack.pack("folder", str(tmp_path / "mine"), out, {"split": "auto"}, progress=False) == directory
    assert os.path.getmtime(os.path.join(directory, "dataset_info.json")) == stamp  # reused, not rewritten
    other = pack.pack("folder", str(tmp_path / "mine"), out, {"split": "query"}, progress=False)
    assert other.endswith(os.path.join("folder-split=query", "1.0.0"))
    assert len(pack.PackedTracklets(other, "query")) == 1 and len(pack.PackedTracklets(other, "train")) == 0
    with pytest.raises(ValueError, match="several packed datasets"):
        pack.load_packed(out)
    with pytest.raises(FileNotFoundError, match="no packed dataset"):
        pack.load_packed(str(tmp_path / "mine"))


def test_pack_reports_reader_errors_before_writing(tmp_path):
    os.makedirs(tmp_path / "data")
    with pytest.raises(DatasetError, match="train.txt"):
        pack.pack("ccvid", str(tmp_path / "data"), str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out")  # read first: no folder made
    with pytest.raises(ValueError, match="unknown dataset"):
        pack.pack("nope", str(tmp_path / "data"), str(tmp_path / "out"), progress=False)


def test_command_line_never_imports_tensorflow(packed, tmp_path):
    folders, directory = packed
    data_root = os.path.dirname(folders.train[0].frames[0]).split("session1")[0]
    other = f"{tmp_path}_other"  # beside the output folder: neither holds the other
    os.makedirs(other)
    script = (
        "import sys\n"
        "from svreid_jax.data import pack\n"
        f"code = pack.main(['pack', '--dataset=ccvid', '--root={data_root}', '--out={tmp_path}'])\n"
        f"splits = pack.load_packed({str(tmp_path)!r})\n"
        "splits.gallery.load_clip(0, [0, 1], 8, 4, False)\n"
        "print('exit', code, 'tensorflow loaded:', any(m.split('.')[0] == 'tensorflow' for m in sys.modules))\n"
        "print('tfds loaded:', 'tensorflow_datasets' in sys.modules)\n"
        f"print('bad', pack.main(['pack', '--dataset=ccvid', '--root={tmp_path}/none', '--out={tmp_path}/2']))\n"
        f"print('other root', pack.main(['pack', '--dataset=ccvid', '--root={other}', '--out={tmp_path}']))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exit 0 tensorflow loaded: False" in done.stdout and "tfds loaded: True" in done.stdout
    assert f"packed ccvid (train: 6 tracklets, query: 2 tracklets, gallery: 3 tracklets) to {tmp_path}" in done.stdout
    assert "bad 1" in done.stdout and "error: ccvid: dataset root" in done.stderr and "Traceback" not in done.stderr
    assert "other root 1" in done.stdout and f"packed from {data_root.rstrip(os.sep)}, not {other}" in done.stderr


def test_packing_streams_records_into_shards(packed, tmp_path, monkeypatch):
    """Records go to array_record shards one at a time: tfds's writer, which spills a split past its
    in-memory limit through tf.io.gfile (TensorFlow), is not used; shards close past SHARD_BYTES."""
    from tensorflow_datasets.core import shuffle

    from svreid_jax.data.tfds_builders import svreid_tracklets

    folders, _ = packed
    root = os.path.dirname(os.path.dirname(os.path.dirname(folders.train[0].frames[0])))
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)  # tfds's writer would spill at once
    monkeypatch.setattr(svreid_tracklets.svreid_tracklets_dataset_builder, "SHARD_BYTES", 1)  # a shard per record
    directory = pack.pack("ccvid", root, str(tmp_path / "out"), progress=False)
    shards = sorted(n for n in os.listdir(directory) if ".array_record-" in n)
    assert shards[:2] == ["svreid_tracklets-gallery.array_record-00000-of-00003",
                          "svreid_tracklets-gallery.array_record-00001-of-00003"]
    assert len(shards) == sum(len(getattr(folders, s)) for s in ("train", "query", "gallery"))
    assert not os.path.exists(directory + ".incomplete")
    splits = pack.load_packed(directory)
    for split in ("train", "query", "gallery"):
        for i, tracklet in enumerate(getattr(folders, split)):
            for k, path in enumerate(tracklet.frames):
                with open(path, "rb") as f:
                    assert getattr(splits, split).frame_bytes(i, k) == f.read(), (split, i, k)
