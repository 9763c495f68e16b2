"""`python -m svreid_jax.data.check`: the statistics table, the reader's counts, options, and errors
printed without a traceback (run in-process through `check.main`)."""
import os

import h5py
import numpy as np

from svreid_jax.data import check

# CCVID layout: (tracklet dir, pid, clothes, frames)
_CCVID = {
    "train.txt": [("session1/001_01", "001", "u1", 3), ("session3/001_02", "001", "u2", 5),
                  ("session2/002_01", "002", "u1", 4)],
    "query.txt": [("session1/005_01", "005", "u1", 2), ("session1/006_01", "006", "u1", 6)],
    "gallery.txt": [("session3/005_02", "005", "u2", 3), ("session2/006_01", "006", "u1", 1)],
}


def _touch(folder, names):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        open(os.path.join(folder, n), "wb").close()


def _write_ccvid(root):
    for name, rows in _CCVID.items():
        with open(root / name, "w") as f:
            for tdir, pid, clothes, n in rows:
                f.write(f"{tdir} {pid} {clothes}\n")
                _touch(root / tdir, [f"{i}.jpg" for i in range(n)])
    return str(root)


def _write_lsvid(root):
    os.makedirs(root / "list_sequence")
    rows = {"list_seq_train.txt": [("t/0001/0001_1_03_", 1, 5), ("t/0002/0002_1_01_", -1, 0)],
            "list_seq_test.txt": [("s/0007/0007_1_02_", 7, 3), ("s/0007/0007_2_09_", 7, 4),
                                  ("s/0000/0000_1_01_", -1, 0)]}
    for name, tracks in rows.items():
        with open(root / "list_sequence" / name, "w") as f:
            for prefix, pid, n in tracks:
                f.write(f"{prefix} {pid}\n")
                _touch(root / os.path.dirname(prefix), [f"{os.path.basename(prefix)}{i}.jpg" for i in range(1, n + 1)])
    os.makedirs(root / "test" / "data")
    with h5py.File(root / "test" / "data" / "info_test.mat", "w") as f:
        f.create_dataset("query", data=np.array([[1.0, 3.0]]))
    return str(root)


def _run(capsys, *args):
    code = check.main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_per_split(tmp_path, capsys):
    root = _write_ccvid(tmp_path)
    code, out, err = _run(capsys, "--dataset=ccvid", f"--root={root}")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"dataset ccvid at {root}"
    assert lines[1].split() == ["split", "identities", "tracklets", "frames", "cameras", "clothes", "min", "len",
                                "median", "len", "max", "len"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:7]}
    # camid = WW (+12 for session3); clothes: train map over 001_u1, 001_u2, 002_u1; one test map
    # over 005_u1, 005_u2, 006_u1.
    assert rows["train"] == ["2", "3", "12", "2", "3", "3", "4", "5"]  # cameras 1, 14, 1
    assert rows["query"] == ["2", "2", "8", "1", "2", "2", "4", "6"]  # cameras 1, 1
    assert rows["gallery"] == ["2", "2", "4", "2", "2", "1", "2", "3"]  # cameras 14, 1
    assert rows["total"] == ["4", "7", "24", "2", "-", "1", "3", "6"]
    assert "reader counts" not in out  # CCVID drops nothing
    # Query 006 (camera 1) has only a camera-1 gallery tracklet; query 005 matches across cameras.
    assert lines[-1] == ("queries without a same-identity gallery tracklet from another camera: 1 of 2 "
                         "(the ranking skips them)")


def test_reader_counts_and_options(tmp_path, capsys):
    root = _write_lsvid(tmp_path)
    code, out, _ = _run(capsys, "--dataset=lsvid", f"--root={root}", "--option", "cut_length=2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"dataset lsvid at {root} (cut_length=2)"
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:7]}
    assert rows["train"] == ["1", "2", "5", "1", "-", "2", "2.5", "3"]  # 5 frames cut into 2 + 3
    assert rows["query"] == ["1", "1", "3", "1", "-", "3", "3", "3"]  # 3 frames < 2·2: one piece
    assert rows["gallery"] == ["1", "2", "4", "1", "-", "2", "2", "2"]
    counts = lines[lines.index("reader counts (LsvidStats):") + 1:-1]
    assert counts == ["  train_rows: 2", "  test_rows: 3", "  query_rows: 2", "  junk_train: 1", "  junk_test: 1",
                      "  junk_query: 1", "  cut_length: 2"]
    assert lines[-1].startswith("queries without a same-identity gallery tracklet from another camera: 0 of 1")
    code, out, _ = _run(capsys, "--dataset=lsvid", f"--root={root}", "--option=cut_length=none")
    assert code == 0 and "(cut_length=None)" in out and "  cut_length: -" in out


def test_reader_errors_exit_1_without_traceback(tmp_path, capsys):
    root = _write_ccvid(tmp_path)
    with open(tmp_path / "gallery.txt", "a") as f:
        f.write("session1/009_01 nine u1\n")
    code, out, err = _run(capsys, "--dataset=ccvid", f"--root={root}")
    assert code == 1 and out == ""
    assert err == (f"error: ccvid: {tmp_path / 'gallery.txt'}, line 3: the pid (2nd field) must be an integer "
                   "in ASCII digits 0-9, got 'nine'\n")
    code, _, err = _run(capsys, "--dataset=ccvid", f"--root={tmp_path / 'absent'}")
    assert code == 1 and "does not exist" in err and "Traceback" not in err
    code, _, err = _run(capsys, "--dataset=ccvid", f"--root={root}", "--split_id=2")
    assert code == 1 and "has no option(s) split_id" in err
    code, _, err = _run(capsys, "--dataset=lsvid", f"--root={root}", "--option=cut_length=zero")
    assert code == 1 and "cut_length='zero'" in err


def test_usage_errors(capsys):
    code, _, err = _run(capsys, "--dataset=mars")
    assert code == 2 and "--root must be given" in err and "usage:" in err
    code, _, err = _run(capsys, "--dataset=mars", "--root=/x", "--option=gallery")
    assert code == 2 and "expected key=value" in err
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "--split_id" in out and "lsvid" in out


def test_parse_value():
    assert [check.parse_value(v) for v in ("48", "0.5", "True", "none", "include_query")] == [
        48, 0.5, True, None, "include_query"]
