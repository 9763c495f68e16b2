"""LS-VID's per-folder listing: a prefix's frames found by bisection, in frame_sort_key order whether or not
the names take the zero-padded shortcut (the order a full filter-and-sort of the folder gives)."""
import os

from svreid_jax.data.datasets import _common, lsvid


def _expected(folder, stem):
    names = [n for n in os.listdir(folder) if n.lower().endswith(lsvid.IMAGE_EXTENSIONS) and n.startswith(stem)]
    return [os.path.join(folder, n) for n in sorted(names, key=_common.frame_sort_key)]


def test_prefix_frames_in_temporal_order(tmp_path):
    folder = tmp_path / "tracklet_train" / "0001"
    os.makedirs(folder)
    names = (
        [f"0001_01_2_{i:04d}.jpg" for i in (12, 3, 1, 10, 2)]  # zero-padded, one width: the shortcut
        + ["0001_02_2_0009.jpg", "0001_02_2_0010.jpg", "0001_02_2_0011.png"]  # two extensions: parsed
        + ["0001_03_2_1.jpg", "0001_03_2_10.jpg", "0001_03_2_2.jpg"]  # widths differ: parsed (1, 2, 10)
        + ["0001_04_2_7.jpg", "0001_04_2_0008.jpg"]  # mixed padding: parsed
        + ["0001_05_2_a.jpg", "0001_05_2_0003.jpg"]  # a name without a number: after the numbered ones
        + ["0001_010_3_0001.jpg", "0001_01_2_notes.txt"]  # another tracklet; not an image
    )
    for n in names:
        (folder / n).write_bytes(b"")
    listing = lsvid._PrefixListing(str(tmp_path))
    for stem in ("0001_01_2_", "0001_02_2_", "0001_03_2_", "0001_04_2_", "0001_05_2_", "0001_010_3_", "0001_0"):
        got = listing.frames(f"tracklet_train/0001/{stem}", "where")
        assert got == _expected(str(folder), stem), stem
    assert [os.path.basename(p) for p in listing.frames("tracklet_train/0001/0001_01_2_", "w")] == [
        "0001_01_2_0001.jpg", "0001_01_2_0002.jpg", "0001_01_2_0003.jpg", "0001_01_2_0010.jpg", "0001_01_2_0012.jpg"]
    assert [os.path.basename(p) for p in listing.frames("tracklet_train/0001/0001_03_2_", "w")] == [
        "0001_03_2_1.jpg", "0001_03_2_2.jpg", "0001_03_2_10.jpg"]
    assert listing.frames("tracklet_train/0001/", "w") == _expected(str(folder), "")  # a whole folder
    assert listing.frames("tracklet_train/0001/0002_", "w") == []


def test_zero_padded_shortcut_conditions():
    assert lsvid._zero_padded(["a_0001.jpg", "a_0002.jpg"], "a_")
    assert not lsvid._zero_padded(["a_0001.jpg", "a_0002.png"], "a_")  # extensions differ
    assert not lsvid._zero_padded(["a_01.jpg", "a_002.jpg"], "a_")  # widths differ
    assert not lsvid._zero_padded(["a1_01.jpg"], "a1")  # the stem ends in a digit: the number may start earlier
    assert not lsvid._zero_padded(["a_x1.jpg"], "a_")  # not all digits
    assert not lsvid._zero_padded(["a_\u0661\u0662.jpg"], "a_")  # non-ASCII digits sort apart from their value
    assert not lsvid._zero_padded([], "a_")
