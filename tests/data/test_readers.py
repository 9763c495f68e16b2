"""Dataset readers: hand-written tiny fixtures (layout, conventions, every bad-input message) and the toy data."""
import os

import numpy as np
import pytest
import scipy.io

from svreid_jax.data import datasets, demo as demo_data
from svreid_jax.data.datasets import mars
from svreid_jax.data.records import DatasetError, DatasetSplits


# ---------------------------------------------------------------------------------------------
# Fixture writers


def _touch_frames(folder, names):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        with open(os.path.join(folder, n), "wb") as f:
            f.write(b"\xff\xd8")


def _write_svreid(base, lists, folder="SVReID", frames=("f_2.jpg", "f_10.jpg", "f_1.jpg")):
    """lists: {list file name: [(tracklet dir, pid, clothes)]}; each dir gets `frames`. Returns the dataset dir."""
    d = os.path.join(base, folder) if folder else str(base)
    os.makedirs(d, exist_ok=True)
    for list_name, rows in lists.items():
        with open(os.path.join(d, list_name), "w") as f:
            for tdir, pid, clothes in rows:
                f.write(f"{tdir} {pid} {clothes}\n")
                _touch_frames(os.path.join(d, tdir), frames)
    return d


_TRAIN = [("9/a/1", "9", "a"), ("9/b/2", "9", "b"), ("10/a/0", "10", "a"), ("100/c/3", "100", "c")]
_QUERY = [("7/a/1", "7", "a")]
_GALLERY = [("7/b/2", "7", "b"), ("8/a/3", "8", "a")]


def _svreid_lists(train_name="train_svreid.txt"):
    return {train_name: _TRAIN, "query.txt": _QUERY, "gallery.txt": _GALLERY}


def _write_mars(base, train, test, query_idx, extra_test_names=()):
    """train/test: [(pid4 string, pid, cam, num frames)] → a MARS tree; query_idx 1-based."""
    info = os.path.join(base, "info")
    os.makedirs(info, exist_ok=True)
    for split, tracks in (("train", train), ("test", test)):
        names, rows, counter = [], [], {}
        for pid4, pid, cam, n in tracks:
            t = counter[(pid4, cam)] = counter.get((pid4, cam), 0) + 1
            new = [f"{pid4}C{cam}T{t:04d}F{i + 1:03d}.jpg" for i in range(n)]
            rows.append([len(names) + 1, len(names) + n, pid, cam])
            names += new
            _touch_frames(os.path.join(base, f"bbox_{split}", pid4), new)
        with open(os.path.join(info, f"{split}_name.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        key = f"track_{split}_info"
        scipy.io.savemat(os.path.join(info, f"tracks_{split}_info.mat"), {key: np.array(rows, np.float64)})
    scipy.io.savemat(os.path.join(info, "query_IDX.mat"), {"query_IDX": np.array([query_idx], np.float64)})


_MARS_TRAIN = [("0003", 3, 1, 3), ("0003", 3, 2, 2), ("0001", 1, 4, 4)]
_MARS_TEST = [("00-1", -1, 1, 2), ("0000", 0, 3, 2), ("0005", 5, 1, 3), ("0005", 5, 2, 2), ("0006", 6, 6, 2),
              ("0006", 6, 1, 3)]
_MARS_QUERY = [3, 6]  # rows of 0005 cam1 and 0006 cam1


def _mars_root(tmp_path):
    root = str(tmp_path / "mars")
    _write_mars(root, _MARS_TRAIN, _MARS_TEST, _MARS_QUERY)
    return root


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# Registry


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"data.<source\|target>.name='nope': unknown dataset; expected one of "
                                         r"\[.*'mars'.*'svreid'"):
        datasets.load("nope", "/tmp")


def test_a_registered_reader_is_loaded_with_its_options(tmp_path):
    read = []

    def load_toy(root, *, gallery="all"):
        read.append((root, gallery))
        return DatasetSplits(train=(), query=(), gallery=())

    datasets.register("toy", load_toy, with_stats=lambda root, **options: (load_toy(root, **options), "counts"))
    try:
        assert "toy" in datasets.names() and datasets.options("toy") == {"gallery": "all"}
        assert datasets.load("toy", str(tmp_path), gallery="none") == DatasetSplits((), (), ())
        assert datasets.load_with_stats("toy", str(tmp_path))[1] == "counts"
        assert read == [(str(tmp_path), "none"), (str(tmp_path), "all")]
        with pytest.raises(ValueError, match="dataset 'toy' is already registered"):
            datasets.register("toy", load_toy)
        with pytest.raises(ValueError, match="no option.*bogus.*gallery"):
            datasets.load("toy", str(tmp_path), bogus=1)
    finally:
        datasets.unregister("toy")
    assert "toy" not in datasets.names() and "toy" not in datasets.WITH_STATS


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(ValueError, match="no option.*bogus.*gallery"):
        datasets.load("mars", str(tmp_path), bogus=1)


# ---------------------------------------------------------------------------------------------
# SVReID


def test_svreid_conventions(tmp_path):
    _write_svreid(tmp_path, _svreid_lists())
    s = datasets.load("svreid", str(tmp_path))
    # Train pids relabelled in sorted order of the pid strings: '10' < '100' < '9'.
    assert [t.pid for t in s.train] == [2, 2, 0, 1]
    assert [t.camid for t in s.train] == [1, 2, 0, 3]  # leaf folder, kept as written
    assert [t.clothes_id for t in s.train] == [2, 3, 1, 0]  # '100_c' < '10_a' < '9_a' < '9_b'
    assert [t.pid for t in s.query] == [7] and [t.pid for t in s.gallery] == [7, 8]
    # Query and gallery share one clothes map over their union: '7_a', '7_b', '8_a'.
    assert [t.clothes_id for t in s.query + s.gallery] == [0, 1, 2]
    assert [os.path.basename(f) for f in s.train[0].frames] == ["f_1.jpg", "f_2.jpg", "f_10.jpg"]
    assert s.train[0].frames[0] == os.path.join(str(tmp_path), "SVReID", "9", "a", "1", "f_1.jpg")


def test_svreid_frame_order_falls_back_to_lexicographic(tmp_path):
    _write_svreid(tmp_path, _svreid_lists(), frames=("b.jpg", "a.jpg", "x3.jpg", "x.txt"))
    s = datasets.load("svreid", str(tmp_path))
    assert [os.path.basename(f) for f in s.train[0].frames] == ["x3.jpg", "a.jpg", "b.jpg"]


def test_svreid_folder_precedence(tmp_path):
    _write_svreid(tmp_path, _svreid_lists(), folder="SVReID")
    _write_svreid(tmp_path, {"train_svreid.txt": _TRAIN[:1], "query.txt": _QUERY, "gallery.txt": _GALLERY},
                  folder="V3DGait_VIS")
    assert len(datasets.load("svreid", str(tmp_path)).train) == 1  # V3DGait_VIS wins
    # The dataset folder itself is accepted as root.
    assert len(datasets.load("svreid", str(tmp_path / "SVReID")).train) == 4


@pytest.mark.parametrize("name", ["svreid_cc", "svreid_plus"])
def test_svreid_variants_use_their_train_list(tmp_path, name):
    lists = _svreid_lists(f"train_{name}.txt")
    lists["train_svreid.txt"] = _TRAIN[:1]
    _write_svreid(tmp_path, lists)
    assert len(datasets.load(name, str(tmp_path)).train) == 4
    assert len(datasets.load("svreid", str(tmp_path)).train) == 1


def test_svreid_missing_root(tmp_path):
    msg = _error(datasets.load, "svreid", str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in msg and "train_svreid.txt" in msg and "V3DGait_VIS" in msg


def test_svreid_missing_train_list(tmp_path):
    os.makedirs(tmp_path / "SVReID")
    msg = _error(datasets.load, "svreid_cc", str(tmp_path))
    assert "train_svreid_cc.txt" in msg and str(tmp_path / "SVReID") in msg


def test_svreid_missing_query_list(tmp_path):
    d = _write_svreid(tmp_path, _svreid_lists())
    os.remove(os.path.join(d, "query.txt"))
    assert os.path.join(d, "query.txt") in _error(datasets.load, "svreid", str(tmp_path))


def test_svreid_wrong_field_count(tmp_path):
    d = _write_svreid(tmp_path, _svreid_lists())
    with open(os.path.join(d, "gallery.txt"), "a") as f:
        f.write("\n8/b/1 8\n")  # line 4 (line 3 is blank)
    msg = _error(datasets.load, "svreid", str(tmp_path))
    assert "gallery.txt, line 4" in msg and "expected 3" in msg


def test_svreid_non_integer_pid(tmp_path):
    d = _write_svreid(tmp_path, _svreid_lists())
    with open(os.path.join(d, "train_svreid.txt"), "a") as f:
        f.write("x/a/1 x1 a\n")
    msg = _error(datasets.load, "svreid", str(tmp_path))
    assert "train_svreid.txt, line 5" in msg and "'x1'" in msg and "integer" in msg


def test_svreid_empty_tracklet_folder(tmp_path):
    d = _write_svreid(tmp_path, _svreid_lists())
    with open(os.path.join(d, "query.txt"), "a") as f:
        f.write("7/c/4 7 c\n")
    os.makedirs(os.path.join(d, "7", "c", "4"))
    msg = _error(datasets.load, "svreid", str(tmp_path))
    assert "query.txt, line 2" in msg and "no .jpg/.jpeg/.png frames" in msg


def test_svreid_missing_tracklet_folder(tmp_path):
    d = _write_svreid(tmp_path, _svreid_lists())
    with open(os.path.join(d, "query.txt"), "a") as f:
        f.write("7/c/4 7 c\n")
    msg = _error(datasets.load, "svreid", str(tmp_path))
    assert "query.txt, line 2" in msg and "does not exist" in msg and os.path.join("7", "c", "4") in msg


def test_svreid_camera_leaf_must_be_a_number(tmp_path):
    d = _write_svreid(tmp_path, _svreid_lists())
    with open(os.path.join(d, "query.txt"), "a") as f:
        f.write("7/c/cam4 7 c\n")
    msg = _error(datasets.load, "svreid", str(tmp_path))
    assert "query.txt, line 2" in msg and "'cam4'" in msg


# ---------------------------------------------------------------------------------------------
# MARS


def test_mars_conventions(tmp_path):
    root = _mars_root(tmp_path)
    s, stats = mars.load_with_stats(root)
    assert [t.pid for t in s.train] == [1, 1, 0]  # raw 3, 3, 1 relabelled in sorted order
    assert [t.camid for t in s.train] == [0, 1, 3]
    assert [len(t) for t in s.train] == [3, 2, 4]
    assert all(t.clothes_id is None for t in s.train)
    assert s.train[0].frames == tuple(os.path.join(root, "bbox_train", "0003", f"0003C1T0001F00{i}.jpg")
                                      for i in (1, 2, 3))
    assert [(t.pid, t.camid) for t in s.query] == [(5, 0), (6, 0)]
    assert [(t.pid, t.camid) for t in s.gallery] == [(0, 2), (5, 1), (6, 5)]  # junk dropped, distractor kept
    assert stats == mars.MarsStats(train_rows=3, test_rows=6, query_rows=2, junk_train=0, junk_test=1,
                                   junk_query=0, distractors=1)


def test_mars_gallery_modes(tmp_path):
    root = _mars_root(tmp_path)
    exclude = datasets.load("mars", root, gallery="exclude_query")
    include = datasets.load("mars", root, gallery="include_query")
    everything = datasets.load("mars", root, gallery="all")
    assert include.gallery == exclude.gallery + exclude.query
    assert [(t.pid, t.camid) for t in everything.gallery] == [(0, 2), (5, 0), (5, 1), (6, 5), (6, 0)]
    assert set(everything.gallery) == set(include.gallery)
    assert everything.query == exclude.query
    with pytest.raises(ValueError, match="exclude_query"):
        datasets.load("mars", root, gallery="both")


def test_mars_check_frames_off_skips_listing(tmp_path):
    root = _mars_root(tmp_path)
    os.remove(os.path.join(root, "bbox_test", "0005", "0005C1T0001F002.jpg"))
    assert len(datasets.load("mars", root, check_frames=False).query) == 2


def test_mars_missing_root(tmp_path):
    msg = _error(datasets.load, "mars", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in msg and "tracks_train_info.mat" in msg and "bbox_test" in msg


@pytest.mark.parametrize("name", ["train_name.txt", "test_name.txt", "tracks_train_info.mat",
                                  "tracks_test_info.mat", "query_IDX.mat"])
def test_mars_missing_info_file(tmp_path, name):
    root = _mars_root(tmp_path)
    os.remove(os.path.join(root, "info", name))
    assert os.path.join(root, "info", name) in _error(datasets.load, "mars", root)


def test_mars_mat_without_key(tmp_path):
    root = _mars_root(tmp_path)
    path = os.path.join(root, "info", "query_IDX.mat")
    scipy.io.savemat(path, {"queries": np.array([[1]])})
    msg = _error(datasets.load, "mars", root)
    assert path in msg and "'query_IDX'" in msg and "queries" in msg


def test_mars_not_a_mat_file(tmp_path):
    root = _mars_root(tmp_path)
    path = os.path.join(root, "info", "tracks_test_info.mat")
    with open(path, "w") as f:
        f.write("hello")
    assert path in _error(datasets.load, "mars", root)


def test_mars_bad_row(tmp_path):
    root = _mars_root(tmp_path)
    path = os.path.join(root, "info", "tracks_train_info.mat")
    scipy.io.savemat(path, {"track_train_info": np.array([[1, 3, 3, 1], [4, 99, 3, 2]], np.float64)})
    msg = _error(datasets.load, "mars", root)
    assert path in msg and "'track_train_info', row 2" in msg and "end <= 9" in msg


def test_mars_bad_shape(tmp_path):
    root = _mars_root(tmp_path)
    path = os.path.join(root, "info", "tracks_train_info.mat")
    scipy.io.savemat(path, {"track_train_info": np.array([[1, 3, 3]], np.float64)})
    assert "N×4" in _error(datasets.load, "mars", root)


def test_mars_query_index_out_of_range(tmp_path):
    root = _mars_root(tmp_path)
    scipy.io.savemat(os.path.join(root, "info", "query_IDX.mat"), {"query_IDX": np.array([[3, 7]])})
    msg = _error(datasets.load, "mars", root)
    assert "query_IDX.mat" in msg and "entry 2" in msg and "1..6" in msg


def test_mars_inconsistent_tracklet(tmp_path):
    root = _mars_root(tmp_path)
    # Row 1 of train spans 0003C1 frames; stretch it into the 0003C2 tracklet.
    scipy.io.savemat(os.path.join(root, "info", "tracks_train_info.mat"),
                     {"track_train_info": np.array([[1, 4, 3, 1]], np.float64)})
    msg = _error(datasets.load, "mars", root)
    assert "tracks_train_info.mat" in msg and "row 1" in msg and "camera character" in msg


def test_mars_missing_frame(tmp_path):
    root = _mars_root(tmp_path)
    os.remove(os.path.join(root, "bbox_test", "0005", "0005C2T0001F002.jpg"))
    msg = _error(datasets.load, "mars", root)
    # test rows: 00-1 (2 frames), 0000 (2), 0005 C1 (3), 0005 C2 (2) → its 2nd frame is line 9.
    assert "test_name.txt, line 9" in msg and "0005C2T0001F002.jpg is missing" in msg and "row 4" in msg


def test_mars_missing_frame_folder(tmp_path):
    root = _mars_root(tmp_path)
    folder = os.path.join(root, "bbox_train", "0001")
    for n in os.listdir(folder):
        os.remove(os.path.join(folder, n))
    os.rmdir(folder)
    msg = _error(datasets.load, "mars", root)
    assert folder in msg and "row 3" in msg


def test_mars_blank_line_in_names(tmp_path):
    root = _mars_root(tmp_path)
    path = os.path.join(root, "info", "train_name.txt")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:2] + [""] + lines[2:]) + "\n\n")
    assert f"{path}, line 3 is empty" in _error(datasets.load, "mars", root)


# ---------------------------------------------------------------------------------------------
# The toy data, read back


_TOY = dict(num_source_ids=5, num_source_test_ids=3, num_target_train_ids=4, num_target_test_ids=4, num_cameras=4,
            tracklets_per_id=(2, 4), frames_per_tracklet=(8, 14), num_outfits=2, num_distractors=2, num_junk=2,
            height=32, width=16)


@pytest.fixture(scope="module")
def toy_paths(tmp_path_factory):
    return demo_data.generate(str(tmp_path_factory.mktemp("toy")), **_TOY)


def _list(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def test_toy_source_reads_back(toy_paths):
    d = os.path.join(toy_paths.source_root, "SVReID")
    s = datasets.load("svreid", toy_paths.source_root)
    train, query, gallery = (_list(os.path.join(d, n)) for n in ("train_svreid.txt", "query.txt", "gallery.txt"))
    assert (len(s.train), len(s.query), len(s.gallery)) == (len(train), len(query), len(gallery))
    assert len(query) == 3  # one per source test identity
    # Toy pids are zero-padded, so string order is numeric order.
    raw = sorted({int(p) for _, p, _ in train})
    assert raw == [1, 2, 3, 4, 5] and [t.pid for t in s.train] == [raw.index(int(p)) for _, p, _ in train]
    assert [t.pid for t in s.query + s.gallery] == [int(p) for _, p, _ in query + gallery]
    assert {t.pid for t in s.query} == {6, 7, 8}
    assert [t.camid for t in s.train] == [int(tdir.rsplit("/", 1)[1]) for tdir, _, _ in train]
    assert {t.camid for t in s.train} <= {0, 1, 2, 3}
    # Two outfits per identity: train clothes ids are 0..9 in order of '<pid>_<outfit>'.
    assert [t.clothes_id for t in s.train] == [2 * (int(p) - 1) + int(c) for _, p, c in train]
    for t in s.train + s.query + s.gallery:
        assert [os.path.basename(f) for f in t.frames] == [f"{i + 1}.jpg" for i in range(len(t))]
        assert 8 <= len(t) <= 14


def test_toy_target_reads_back(toy_paths):
    root = toy_paths.target_root
    s, stats = mars.load_with_stats(root)
    train_names = open(os.path.join(root, "info", "train_name.txt")).read().split()
    test_names = open(os.path.join(root, "info", "test_name.txt")).read().split()
    tracklet = lambda n: n[:11]  # noqa: E731  (pid4, C, cam, T, number)
    assert len(s.train) == len({tracklet(n) for n in train_names})
    num_test = len({tracklet(n) for n in test_names})
    assert stats.junk_test == 2 and stats.distractors == 2 and stats.test_rows == num_test
    assert len(s.query) + len(s.gallery) == num_test - 2
    assert s.num_train_pids == 4 and sorted({t.pid for t in s.train}) == [0, 1, 2, 3]
    raw_test = {int(n[:4]) for n in test_names if not n.startswith("00-1")}
    assert {t.pid for t in s.query + s.gallery} == raw_test and 0 in raw_test and len(raw_test) == 5
    assert not {int(n[:4]) for n in train_names} & (raw_test - {0})  # disjoint people
    assert {t.pid for t in s.query} == raw_test - {0}
    for t in s.train + s.query + s.gallery:
        names = [os.path.basename(f) for f in t.frames]
        assert names == [f"{names[0][:12]}{i + 1:03d}.jpg" for i in range(len(t))]  # F001, F002, ...
        assert t.camid == int(names[0][5]) - 1 and t.camid in range(4)
    # Every query keeps a same-identity gallery tracklet from another camera.
    for q in s.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in s.gallery)
    include = datasets.load("mars", root, gallery="include_query")
    everything = datasets.load("mars", root, gallery="all")
    assert include.gallery == s.gallery + s.query
    assert len(everything.gallery) == num_test - 2 and set(everything.gallery) == set(include.gallery)
