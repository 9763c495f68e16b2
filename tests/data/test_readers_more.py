"""iLIDS-VID, PRID2011, LS-VID, CCVID and folder readers: tiny copies of each real layout (real .mat
files, a v7.3 one for LS-VID), the exact tracklets read per split and option, every bad-input message."""
import json
import logging
import os

import h5py
import numpy as np
import pytest
import scipy.io

from svreid_jax.data import datasets
from svreid_jax.data.datasets import lsvid, prid
from svreid_jax.data.records import DatasetError


def _touch(folder, names):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        with open(os.path.join(folder, n), "wb") as f:
            f.write(b"x")


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def _names(tracklet):
    return [os.path.basename(f) for f in tracklet.frames]


def _summary(tracklets):
    return [(t.pid, t.camid, len(t)) for t in tracklets]


def test_registry_lists_the_new_readers():
    assert {"ilidsvid", "prid", "lsvid", "ccvid", "folder"} <= set(datasets.names())
    assert datasets.options("lsvid") == {"cut_length": None}
    assert datasets.options("ilidsvid") == {"split_id": 0}
    with pytest.raises(ValueError, match="no option.*gallery.*split_id"):
        datasets.load("prid", "/tmp", gallery="all")


# ---------------------------------------------------------------------------------------------
# iLIDS-VID

# Person folders in name order: person001, person002, person004, person010.
_ILIDS_PERSONS = {"person001": 3, "person002": 4, "person004": 2, "person010": 5}  # → cam1 length; cam2 is +1
_ILIDS_SPLITS = [[3, 1, 4, 2], [2, 4, 1, 3]]  # per row: first half test, second half train (1-based)


def _write_ilids(base, splits=_ILIDS_SPLITS):
    seq = os.path.join(base, "i-LIDS-VID", "sequences")
    for person, n in _ILIDS_PERSONS.items():
        for cam, length in (("cam1", n), ("cam2", n + 1)):
            # Unpadded frame numbers: string order would put 10 before 2.
            frames = [f"{cam}_{person}_{i}.png" for i in reversed(range(1, length + 1))] + ["Thumbs.db"]
            _touch(os.path.join(seq, cam, person), frames)
    mat_dir = os.path.join(base, "train-test people splits")
    os.makedirs(mat_dir, exist_ok=True)
    scipy.io.savemat(os.path.join(mat_dir, "train_test_splits_ilidsvid.mat"), {"ls_set": np.array(splits, np.float64)})
    return str(base)


def test_ilidsvid_split_0(tmp_path):
    root = _write_ilids(tmp_path)
    s = datasets.load("ilidsvid", root)
    # Row 0: test = indices 3, 1 → person004, person001; train = 4, 2 → person010, person002.
    # Train: persons in name order (002, 010), cam1 then cam2 each, pids relabelled.
    assert _summary(s.train) == [(0, 0, 4), (0, 1, 5), (1, 0, 5), (1, 1, 6)]
    assert [os.path.basename(os.path.dirname(t.frames[0])) for t in s.train] == ["person002"] * 2 + ["person010"] * 2
    assert _summary(s.query) == [(1, 0, 3), (4, 0, 2)]  # raw person numbers, cam1
    assert _summary(s.gallery) == [(1, 1, 4), (4, 1, 3)]  # cam2
    assert _names(s.query[0]) == ["cam1_person001_1.png", "cam1_person001_2.png", "cam1_person001_3.png"]
    assert s.query[0].frames[0] == os.path.join(root, "i-LIDS-VID", "sequences", "cam1", "person001",
                                                "cam1_person001_1.png")
    assert all(t.clothes_id is None for t in s.train + s.query + s.gallery)


def test_ilidsvid_split_1_and_numeric_frame_order(tmp_path):
    root = _write_ilids(tmp_path)
    s = datasets.load("ilidsvid", root, split_id=1)
    # Row 1: test = 2, 4 → person002, person010; train = 1, 3 → person001, person004.
    assert _summary(s.train) == [(0, 0, 3), (0, 1, 4), (1, 0, 2), (1, 1, 3)]
    assert [t.pid for t in s.query] == [2, 10] and [t.pid for t in s.gallery] == [2, 10]
    assert _names(s.gallery[1]) == [f"cam2_person010_{i}.png" for i in range(1, 7)]  # 1..6, numerically


def test_ilidsvid_valid_splits_json_wins(tmp_path):
    root = _write_ilids(tmp_path)
    with open(tmp_path / "splits.json", "w") as f:
        json.dump([{"train": ["person004", "person001"], "test": ["person010", "person002"]}], f)
    s = datasets.load("ilidsvid", root)
    assert [t.pid for t in s.query] == [2, 10] and _summary(s.train)[0] == (0, 0, 3)
    assert "holds 1 splits" in _error(datasets.load, "ilidsvid", root, split_id=1)


def test_ilidsvid_unparsable_splits_json_falls_back_to_mat(tmp_path, caplog):
    root = _write_ilids(tmp_path)
    reference = datasets.load("ilidsvid", root)
    with open(tmp_path / "splits.json", "w") as f:
        f.write('[{"train": [1, 2]')  # truncated
    with caplog.at_level(logging.WARNING):
        assert datasets.load("ilidsvid", root) == reference
    assert "splits.json" in caplog.text and "does not parse" in caplog.text


def test_ilidsvid_splits_json_unknown_person(tmp_path):
    root = _write_ilids(tmp_path)
    with open(tmp_path / "splits.json", "w") as f:
        json.dump([{"train": ["person004"], "test": ["person999"]}], f)
    msg = _error(datasets.load, "ilidsvid", root)
    assert "splits.json, split 0, key 'test'" in msg and "person999" in msg


def test_ilidsvid_missing_mat(tmp_path):
    root = _write_ilids(tmp_path)
    path = os.path.join(root, "train-test people splits", "train_test_splits_ilidsvid.mat")
    os.remove(path)
    msg = _error(datasets.load, "ilidsvid", root)
    assert f"missing file {path}" in msg and "'ls_set'" in msg


def test_ilidsvid_mat_without_key(tmp_path):
    root = _write_ilids(tmp_path)
    path = os.path.join(root, "train-test people splits", "train_test_splits_ilidsvid.mat")
    scipy.io.savemat(path, {"splits": np.array(_ILIDS_SPLITS)})
    msg = _error(datasets.load, "ilidsvid", root)
    assert path in msg and "no variable 'ls_set'" in msg and "splits" in msg


def test_ilidsvid_bad_split_table(tmp_path):
    root = _write_ilids(tmp_path, splits=[[3, 1, 4, 9]])
    msg = _error(datasets.load, "ilidsvid", root)
    assert "'ls_set', row 1" in msg and "9 is not a person index" in msg and "1..4" in msg
    assert "has 1 splits; split_id=1" in _error(datasets.load, "ilidsvid", root, split_id=1)
    with pytest.raises(ValueError, match="split_id"):
        datasets.load("ilidsvid", root, split_id=-1)


def test_ilidsvid_empty_person_folder(tmp_path):
    root = _write_ilids(tmp_path)
    folder = os.path.join(root, "i-LIDS-VID", "sequences", "cam2", "person004")
    for n in os.listdir(folder):
        os.remove(os.path.join(folder, n))
    msg = _error(datasets.load, "ilidsvid", root)
    assert folder in msg and "holds no" in msg


def test_ilidsvid_cameras_must_match(tmp_path):
    root = _write_ilids(tmp_path)
    _touch(os.path.join(root, "i-LIDS-VID", "sequences", "cam1", "person007"), ["a_1.png"])
    msg = _error(datasets.load, "ilidsvid", root)
    assert "same person folders" in msg and "person007" in msg


def test_ilidsvid_missing_root(tmp_path):
    msg = _error(datasets.load, "ilidsvid", str(tmp_path))
    assert "i-LIDS-VID/sequences" in msg and "ls_set" in msg


# ---------------------------------------------------------------------------------------------
# PRID2011

# (cam_a frames, cam_b frames); person_0201 exists in both views but is two different people.
_PRID = {"person_0001": (21, 25), "person_0002": (30, 22), "person_0003": (40, 20), "person_0004": (22, 21),
         "person_0005": (23, 23), "person_0201": (30, 30)}


def _write_prid(base, extra_b=("person_0202",)):
    ms = os.path.join(base, "prid_2011", "multi_shot")
    for person, lengths in _PRID.items():
        for cam, n in zip(("cam_a", "cam_b"), lengths):
            _touch(os.path.join(ms, cam, person), [f"{i:04d}.png" for i in range(1, n + 1)])
    for person in extra_b:
        _touch(os.path.join(ms, "cam_b", person), ["0001.png"])
    return str(base)


def test_prid_generates_and_saves_standard_splits(tmp_path, caplog):
    root = _write_prid(tmp_path)
    with caplog.at_level(logging.WARNING):
        s, stats = prid.load_with_stats(root)
    path = tmp_path / "splits_prid2011.json"
    assert "generated" in caplog.text and str(path) in caplog.text
    splits = json.load(open(path))
    eligible = ["person_0001", "person_0002", "person_0004", "person_0005"]  # 0003 too short, 0201 not shared
    assert len(splits) == 10
    for split in splits:
        assert len(split["train"]) == 2 and sorted(split["train"] + split["test"]) == eligible
    assert len({tuple(split["train"]) for split in splits}) > 1  # the splits differ
    assert stats == prid.PridStats(generated=True, persons_cam_a=6, persons_cam_b=7, persons_in_split=4, too_short=1)
    train, test = splits[0]["train"], splits[0]["test"]
    assert _summary(s.train) == [(i // 2, i % 2, _PRID[train[i // 2]][i % 2]) for i in range(4)]
    assert [t.pid for t in s.query] == [int(p[-4:]) for p in test] and {t.camid for t in s.query} == {0}
    assert [t.pid for t in s.gallery] == [int(p[-4:]) for p in test] and {t.camid for t in s.gallery} == {1}
    # Deterministic: generating again elsewhere gives the same file; once saved, it is read, not regenerated.
    other = _write_prid(tmp_path / "again")
    prid.load_with_stats(other)
    assert json.load(open(tmp_path / "again" / "splits_prid2011.json")) == splits
    s3, stats3 = prid.load_with_stats(root, split_id=3)
    assert not stats3.generated and stats3.too_short is None
    assert sorted(t.pid for t in s3.query) == [int(p[-4:]) for p in splits[3]["test"]]


def test_prid_reads_torchreid_json(tmp_path):
    root = _write_prid(tmp_path)
    with open(tmp_path / "splits_prid2011.json", "w") as f:
        json.dump([{"train": ["person_0003", "person_0001"], "test": [2, "person_0201"]}] * 2, f)
    s = datasets.load("prid", root, split_id=1)
    assert _summary(s.train) == [(0, 0, 21), (0, 1, 25), (1, 0, 40), (1, 1, 20)]
    assert _summary(s.query) == [(2, 0, 30), (201, 0, 30)]
    assert _summary(s.gallery) == [(2, 1, 22), (201, 1, 30)]
    assert _names(s.query[0])[:3] == ["0001.png", "0002.png", "0003.png"]


def test_prid_json_errors(tmp_path):
    root = _write_prid(tmp_path)
    path = tmp_path / "splits_prid2011.json"
    path.write_text(json.dumps([{"train": ["person_0001"], "test": ["person_0202"]}]))
    msg = _error(datasets.load, "prid", root)
    assert "split 0, key 'test'" in msg and "person_0202" in msg and "cam_a" in msg
    path.write_text(json.dumps([{"train": ["person_0001"]}]))
    assert "entry 0" in _error(datasets.load, "prid", root)
    path.write_text("not json")
    assert f"cannot read {path} as JSON" in _error(datasets.load, "prid", root)
    path.write_text(json.dumps([{"train": ["person_0001"], "test": ["person_0002"]}]))
    assert "holds 1 splits" in _error(datasets.load, "prid", root, split_id=4)


def test_prid_empty_tracklet_folder(tmp_path):
    root = _write_prid(tmp_path)
    (tmp_path / "splits_prid2011.json").write_text(json.dumps([{"train": ["person_0001"], "test": ["person_0002"]}]))
    folder = tmp_path / "prid_2011" / "multi_shot" / "cam_b" / "person_0002"
    for f in folder.iterdir():
        f.unlink()
    msg = _error(datasets.load, "prid", root)
    assert str(folder) in msg and "holds no" in msg


# ---------------------------------------------------------------------------------------------
# LS-VID

# (prefix, pid, number of frames); the 3rd '_' field of a frame name is the camera.
_LSVID_TRAIN = [("tracklet_train/0003/0003_01_05_", 3, 5), ("tracklet_train/0003/0003_02_07_", 3, 2),
                ("tracklet_train/0009/0009_01_01_", -1, 0), ("tracklet_train/0001/0001_01_02_", 1, 3)]
_LSVID_TEST = [("tracklet_test/0005/0005_01_01_", 5, 4), ("tracklet_test/0005/0005_02_02_", 5, 2),
               ("tracklet_test/0000/0000_01_03_", -1, 0), ("tracklet_test/0006/0006_01_15_", 6, 7),
               ("tracklet_test/0006/0006_02_04_", 6, 1)]
_LSVID_QUERY = [4, 1, 3]  # 1-based rows of the test list; row 3 is junk


def _write_mat73(path, key, value):
    """A MATLAB v7.3 file: HDF5 behind a 512-byte user block, arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(key, data=np.asarray(value, np.float64).T)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def _write_lsvid(base, info_mirror=False):
    lists = os.path.join(base, "info", "list_sequence") if info_mirror else os.path.join(base, "list_sequence")
    os.makedirs(lists, exist_ok=True)
    for name, rows in (("list_seq_train.txt", _LSVID_TRAIN), ("list_seq_test.txt", _LSVID_TEST)):
        with open(os.path.join(lists, name), "w") as f:
            for prefix, pid, n in rows:
                f.write(f"{prefix} {pid}\n")
                folder, stem = os.path.split(prefix)
                _touch(os.path.join(base, folder), [f"{stem}{i}.jpg" for i in range(1, n + 1)])
    mat_dir = os.path.join(base, "info", "data") if info_mirror else os.path.join(base, "test", "data")
    os.makedirs(mat_dir, exist_ok=True)
    _write_mat73(os.path.join(mat_dir, "info_test.mat"), "query", np.array([_LSVID_QUERY]).T)  # MATLAB N×1
    return str(base)


def test_lsvid_whole_tracklets(tmp_path):
    root = _write_lsvid(tmp_path)
    s, stats = lsvid.load_with_stats(root)
    assert _summary(s.train) == [(1, 4, 5), (1, 6, 2), (0, 1, 3)]  # raw 3, 3, 1 relabelled; camid = field − 1
    assert _summary(s.query) == [(6, 14, 7), (5, 0, 4)]  # query file order, junk row dropped
    assert _summary(s.gallery) == [(5, 1, 2), (6, 3, 1)]
    assert _names(s.query[0]) == [f"0006_01_15_{i}.jpg" for i in range(1, 8)]  # numeric: 1..7
    assert s.train[2].frames[0] == os.path.join(root, "tracklet_train", "0001", "0001_01_02_1.jpg")
    assert stats == lsvid.LsvidStats(train_rows=4, test_rows=5, query_rows=3, junk_train=1, junk_test=1,
                                     junk_query=1, cut_length=None)


def test_lsvid_cut_length_cuts_every_split(tmp_path):
    root = _write_lsvid(tmp_path, info_mirror=True)  # the info/ mirror layout, too
    s = datasets.load("lsvid", root, cut_length=2)
    # 5 → 2 + 3 (last piece keeps the remainder); 2 → 2; 3 → 3 (one piece of 2 plus remainder).
    assert _summary(s.train) == [(1, 4, 2), (1, 4, 3), (1, 6, 2), (0, 1, 3)]
    assert _summary(s.query) == [(6, 14, 2), (6, 14, 2), (6, 14, 3), (5, 0, 2), (5, 0, 2)]
    assert _summary(s.gallery) == [(5, 1, 2), (6, 3, 1)]  # 1 frame < 2 stays whole
    assert _names(s.query[2]) == [f"0006_01_15_{i}.jpg" for i in (5, 6, 7)]
    assert _summary(datasets.load("lsvid", root, cut_length=3).query) == [(6, 14, 3), (6, 14, 4), (5, 0, 4)]
    with pytest.raises(ValueError, match="cut_length"):
        datasets.load("lsvid", root, cut_length=0)


def test_lsvid_cut_at_48():
    lengths = lambda n: [len(p) for p in lsvid.cut(tuple(range(n)), 48)]  # noqa: E731
    assert lengths(47) == [47] and lengths(48) == [48] and lengths(95) == [95] and lengths(96) == [48, 48]
    assert lengths(150) == [48, 48, 54] and lengths(100) == [48, 52]
    assert lsvid.cut(tuple(range(100)), None) == [tuple(range(100))]
    assert sum(lsvid.cut(tuple(range(150)), 48), ()) == tuple(range(150))


def test_lsvid_missing_frames(tmp_path):
    root = _write_lsvid(tmp_path)
    with open(tmp_path / "list_sequence" / "list_seq_test.txt", "a") as f:
        f.write("tracklet_test/0006/0006_03_04_ 6\n")
    msg = _error(datasets.load, "lsvid", root)
    assert "list_seq_test.txt, line 6" in msg and "no image files start with prefix" in msg and "0006_03_04_" in msg
    _write_lsvid(tmp_path)
    with open(tmp_path / "list_sequence" / "list_seq_test.txt", "a") as f:
        f.write("tracklet_test/0077/0077_03_04_ 77\n")
    msg = _error(datasets.load, "lsvid", root)
    assert "line 6" in msg and "tracklet_test/0077 does not exist" in msg


def test_lsvid_bad_lines(tmp_path):
    root = _write_lsvid(tmp_path)
    path = tmp_path / "list_sequence" / "list_seq_train.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + ["tracklet_train/0001/0001_01_02_ 1 extra"]) + "\n")
    msg = _error(datasets.load, "lsvid", root)
    assert "list_seq_train.txt, line 5" in msg and "expected 2" in msg and "<relative path prefix> <pid>" in msg
    path.write_text("\n".join(lines + ["tracklet_train/0001/0001_01_02_ one"]) + "\n")
    msg = _error(datasets.load, "lsvid", root)
    assert "line 5" in msg and "pid" in msg and "'one'" in msg


def test_lsvid_bad_camera_field(tmp_path):
    root = _write_lsvid(tmp_path)
    _touch(tmp_path / "tracklet_test" / "0006", ["0006_02_16_1.jpg", "0006-x_1.jpg"])
    with open(tmp_path / "list_sequence" / "list_seq_test.txt", "a") as f:
        f.write("tracklet_test/0006/0006_02_16_ 6\n")
    msg = _error(datasets.load, "lsvid", root)
    assert "line 6" in msg and "camera 16" in msg and "1..15" in msg
    _write_lsvid(tmp_path)
    with open(tmp_path / "list_sequence" / "list_seq_test.txt", "a") as f:
        f.write("tracklet_test/0006/0006-x_ 6\n")
    msg = _error(datasets.load, "lsvid", root)
    assert "line 6: cannot read the camera from frame name '0006-x_1.jpg'" in msg


def test_lsvid_query_file_errors(tmp_path):
    root = _write_lsvid(tmp_path)
    path = str(tmp_path / "test" / "data" / "info_test.mat")
    _write_mat73(path, "info", np.zeros((5, 4)))
    msg = _error(datasets.load, "lsvid", root)
    assert path in msg and "no variable 'query'" in msg and "info" in msg
    _write_mat73(path, "query", np.array([[1, 6]]))
    msg = _error(datasets.load, "lsvid", root)
    assert "entry 2: 6 is not a row" in msg and "1..5" in msg
    os.remove(path)
    assert f"missing file {path}" in _error(datasets.load, "lsvid", root)


def test_lsvid_missing_lists(tmp_path):
    msg = _error(datasets.load, "lsvid", str(tmp_path))
    assert "list_seq_train.txt" in msg and "info_test.mat" in msg
    root = _write_lsvid(tmp_path)
    os.remove(tmp_path / "list_sequence" / "list_seq_test.txt")
    assert "list_seq_test.txt" in _error(datasets.load, "lsvid", root)


# ---------------------------------------------------------------------------------------------
# CCVID

_CCVID = {
    "train.txt": [("session1/001_01", "001", "u1_l1"), ("session3/001_02", "001", "u2_l1"),
                  ("session2/010_05", "010", "u1_l2")],
    "query.txt": [("session1/005_03", "005", "u1_l1")],
    "gallery.txt": [("session3/005_04", "005", "u3_l1"), ("session2/006_01", "006", "u1_l1")],
}


def _write_ccvid(base, sub=""):
    d = os.path.join(base, sub)
    os.makedirs(d, exist_ok=True)
    for name, rows in _CCVID.items():
        with open(os.path.join(d, name), "w") as f:
            for tdir, pid, clothes in rows:
                f.write(f"{tdir} {pid} {clothes}\n")
                _touch(os.path.join(d, tdir), [f"{i:05d}.jpg" for i in (3, 1, 2)])
    return d


@pytest.mark.parametrize("sub", ["", "image", "CCVID"])
def test_ccvid_conventions(tmp_path, sub):
    d = _write_ccvid(tmp_path, sub)
    s = datasets.load("ccvid", str(tmp_path))
    assert [t.pid for t in s.train] == [0, 0, 1]
    assert [t.camid for t in s.train] == [1, 14, 5]  # WW, +12 for session3
    assert [t.clothes_id for t in s.train] == [0, 1, 2]  # '001_u1_l1' < '001_u2_l1' < '010_u1_l2'
    assert [(t.pid, t.camid, t.clothes_id) for t in s.query] == [(5, 3, 0)]
    assert [(t.pid, t.camid, t.clothes_id) for t in s.gallery] == [(5, 16, 1), (6, 1, 2)]  # shared test map
    assert s.query[0].frames == tuple(os.path.join(d, "session1", "005_03", f"{i:05d}.jpg") for i in (1, 2, 3))


def test_ccvid_bad_inputs(tmp_path):
    d = _write_ccvid(tmp_path)
    query = os.path.join(d, "query.txt")
    with open(query, "a") as f:
        f.write("session1/007_01 007\n")
    msg = _error(datasets.load, "ccvid", str(tmp_path))
    assert "query.txt, line 2" in msg and "expected 3" in msg
    _write_ccvid(tmp_path)
    with open(query, "a") as f:
        f.write("session1/007_01 x7 u1\n")
    assert "query.txt, line 2: the pid (2nd field) must be an integer in ASCII digits 0-9, got 'x7'" in _error(
        datasets.load, "ccvid", str(tmp_path))
    _write_ccvid(tmp_path)
    with open(query, "a") as f:
        f.write("session1/007_01 007 u1\n")
    msg = _error(datasets.load, "ccvid", str(tmp_path))
    assert "query.txt, line 2" in msg and "does not exist" in msg
    os.makedirs(os.path.join(d, "session1", "007_01"))
    assert "holds no .jpg/.png frames" in _error(datasets.load, "ccvid", str(tmp_path))
    _write_ccvid(tmp_path)
    with open(query, "a") as f:
        f.write("session1/007 007 u1\n")
    _touch(os.path.join(d, "session1", "007"), ["1.jpg"])
    assert "is not '<session>/<PPP>_<WW>'" in _error(datasets.load, "ccvid", str(tmp_path))
    os.remove(os.path.join(d, "gallery.txt"))
    assert f"missing file {os.path.join(d, 'gallery.txt')}" in _error(datasets.load, "ccvid", str(tmp_path))


def test_ccvid_missing_root(tmp_path):
    msg = _error(datasets.load, "ccvid", str(tmp_path))
    assert "train.txt" in msg and "CCVID" in msg and "image" in msg


# ---------------------------------------------------------------------------------------------
# folder


def _write_tree(base, tracklets):
    """tracklets: [(pid folder, cam folder, tracklet folder, frames)]."""
    for pid, cam, name, n in tracklets:
        _touch(os.path.join(base, pid, cam, name), [f"{i}.jpg" for i in range(n, 0, -1)])
    return str(base)


_TREE = [("17", "2", "walk_a", 3), ("17", "0", "b", 2), ("003", "1", "x10", 4), ("003", "1", "x9", 1)]


def test_folder_flat_goes_to_train(tmp_path):
    root = _write_tree(tmp_path, _TREE)
    s = datasets.load("folder", root)
    assert _summary(s.train) == [(0, 1, 1), (0, 1, 4), (1, 0, 2), (1, 2, 3)]  # x9 before x10
    assert s.query == () and s.gallery == ()
    assert _names(s.train[3]) == ["1.jpg", "2.jpg", "3.jpg"]
    assert s.train[0].frames[0] == os.path.join(root, "003", "1", "x9", "1.jpg")
    q = datasets.load("folder", root, split="query")
    assert q.train == () and _summary(q.query) == [(3, 1, 1), (3, 1, 4), (17, 0, 2), (17, 2, 3)]
    everything = datasets.load("folder", root, split="all")
    assert everything.query == everything.gallery == q.query and everything.train == s.train
    with pytest.raises(ValueError, match="auto, train, query, gallery, all"):
        datasets.load("folder", root, split="test")


def test_folder_split_subfolders(tmp_path):
    _write_tree(tmp_path / "train", [("5", "0", "a", 2), ("8", "1", "a", 3)])
    _write_tree(tmp_path / "query", [("40", "0", "q", 2)])
    _write_tree(tmp_path / "gallery", [("40", "1", "g", 1), ("41", "1", "g", 2)])
    s = datasets.load("folder", str(tmp_path))
    assert _summary(s.train) == [(0, 0, 2), (1, 1, 3)]
    assert _summary(s.query) == [(40, 0, 2)] and _summary(s.gallery) == [(40, 1, 1), (41, 1, 2)]
    assert datasets.load("folder", str(tmp_path), split="all") == s
    only = datasets.load("folder", str(tmp_path), split="gallery")
    assert only.train == () and only.query == () and only.gallery == s.gallery


def test_folder_bad_inputs(tmp_path):
    root = _write_tree(tmp_path, _TREE)
    os.makedirs(tmp_path / "17" / "cam3" / "t")
    msg = _error(datasets.load, "folder", root)
    assert os.path.join(root, "17", "cam3") in msg and "camid folder name must be an integer in ASCII digits 0-9" in msg
    os.rmdir(tmp_path / "17" / "cam3" / "t")
    os.rmdir(tmp_path / "17" / "cam3")
    os.makedirs(tmp_path / "17" / "2" / "empty")
    msg = _error(datasets.load, "folder", root)
    assert os.path.join(root, "17", "2", "empty") in msg and "holds no" in msg
    os.rmdir(tmp_path / "17" / "2" / "empty")
    _touch(tmp_path / "17", ["notes.txt", ".DS_Store"])
    assert f"{os.path.join(root, '17', 'notes.txt')} is a file" in _error(datasets.load, "folder", root)
    os.remove(tmp_path / "17" / "notes.txt")
    _write_tree(tmp_path, [("0017", "1", "t", 1)])
    assert "are the same pid 17" in _error(datasets.load, "folder", root)
    os.makedirs(tmp_path / "alice")
    assert "pid folder name must be an integer in ASCII digits 0-9, got 'alice'" in _error(datasets.load, "folder", root)
    assert "does not exist" in _error(datasets.load, "folder", str(tmp_path / "nowhere"))
