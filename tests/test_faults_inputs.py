"""Faults in what the user hands in (issue 26, inputs): frames that decode to plausible but wrong pixels or
to gigabytes, list files that reach outside the dataset root, ids that int() accepts but are not ids,
demo data pointed at a real folder, a packer that loses the old pack, an empty target training split.

Each case is injected with tiny generated files and the exact behaviour asserted: decoded values, the
one-line error naming the file / line / field, and that nothing outside what the code made is deleted.
"""
import io
import os
import struct
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from svreid_jax.data import datasets, decode, pipeline
from svreid_jax.data.records import DatasetError, FrameError, Tracklet

DECODERS = ("pil", "auto", "simplejpeg")


# --- decoding ------------------------------------------------------------------------------------


def _png16(path, grey):
    Image.fromarray(np.asarray(grey, np.uint16)).save(path, format="PNG")
    return str(path)


def test_16bit_grey_png_scales_to_8_bits(tmp_path):
    values = np.array([[0, 1, 128, 129, 32767, 32768, 32896, 65279, 65535, 257 * 200]], np.uint16)
    path = _png16(tmp_path / "grey16.png", values)
    assert Image.open(path).mode == "I;16"  # the mode PIL's convert("RGB") clips to 255
    frame = decode.load_frame(path, 1, values.shape[1])
    expected = np.floor(values.astype(np.float64) / 257 + 0.5).astype(np.uint8)  # round(v / 257)
    assert expected.tolist() == [[0, 0, 0, 1, 127, 128, 128, 254, 255, 200]]
    np.testing.assert_array_equal(frame, np.repeat(expected[..., None], 3, axis=-1))


def test_16bit_mid_grey_png_is_128_not_255_after_resizing(tmp_path):
    path = _png16(tmp_path / "mid.png", np.full((20, 10), 32896))
    for decoder in DECODERS:
        frame = decode.load_frame(path, 8, 4, decoder=decoder)
        assert frame.shape == (8, 4, 3) and (frame == 128).all(), decoder


# Where EXIF orientation k puts the stored pixels on display (EXIF 2.3, tag 0x0112), written with numpy.
_DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _jpeg_bytes(pixels, orientation=None, **save):
    buf = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("decoder", DECODERS)
def test_exif_orientation_is_applied_by_every_decoder(tmp_path, orientation, decoder):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)  # height 24, width 16 as stored
    plain = decode.load_frame(_jpeg_bytes(stored), 24, 16, decoder="pil")  # the same DCT data, no EXIF
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(_jpeg_bytes(stored, orientation))
    expected = np.ascontiguousarray(_DISPLAY[orientation](plain))
    got = decode.load_frame(str(path), *expected.shape[:2], decoder=decoder)
    np.testing.assert_array_equal(got, expected)
    # Mirrored clips mirror the upright frame.
    clip = decode.load_clip([str(path)], [0], *expected.shape[:2], flip=True, decoder=decoder)
    np.testing.assert_array_equal(clip[0], expected[:, ::-1])


def test_exif_rotated_jpeg_hand_checked(tmp_path):
    """Stored 16 wide × 8 high, left block black, right block white; orientation 6 (turn clockwise to view)
    shows it 8 wide × 16 high with the black block on top."""
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, 8:] = 255
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(stored, 6))
    for decoder in DECODERS:
        frame = decode.load_frame(str(path), 16, 8, decoder=decoder).astype(int)
        assert frame.shape == (16, 8, 3)
        assert frame[:8].max() <= 1 and frame[8:].min() >= 254, decoder
        # With the target's aspect, draft decoding (orientation-aware draft size) agrees with PIL's own.
        drafted = decode.load_frame(str(path), 8, 4, decoder=decoder, draft=True)
        oracle = Image.open(path)
        oracle.draft("RGB", (8, 4))  # stored orientation: 8 wide, 4 high
        oracle = ImageOps.exif_transpose(oracle).convert("RGB").resize((4, 8), Image.BICUBIC)
        np.testing.assert_array_equal(drafted, np.asarray(oracle))


def test_exif_without_orientation_keeps_the_fast_path(monkeypatch):
    data = _jpeg_bytes(np.full((16, 8, 3), 90, np.uint8), orientation=1)
    assert decode._jpeg_header(data) == ((8, 16), 1) and decode._upright(data)
    assert not decode._upright(_jpeg_bytes(np.full((16, 8, 3), 90, np.uint8), orientation=3))
    calls = []
    monkeypatch.setattr(decode, "_pil_into", lambda *a: calls.append(a))
    decode.load_frame(data, 16, 8)
    assert calls == [] or decode._simplejpeg is None


def _claiming(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """`data` (a small image) with its header rewritten to claim width × height pixels."""
    data = bytearray(data)
    if fmt == "jpeg":
        i = data.index(b"\xff\xc0")
        data[i + 5:i + 9] = struct.pack(">HH", height, width)
    elif fmt == "png":
        data[16:24] = struct.pack(">II", width, height)
    elif fmt == "bmp":
        data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _small(fmt):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(buf, format=fmt.upper())
    return buf.getvalue()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_pixel_cap_is_checked_from_the_header(tmp_path, fmt, decoder):
    path = tmp_path / f"huge.{fmt}"
    path.write_bytes(_claiming(_small(fmt), fmt, 10_000, 5_001))  # 50,010,000 pixels: just over
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before PIL would warn, nothing allocated
        with pytest.raises(FrameError) as err:
            decode.load_frame(str(path), 8, 4, decoder=decoder)
    assert str(err.value) == (f"cannot decode frame {path}: its header gives 10000×5001 pixels, over the cap of "
                              "50,000,000 (decode.MAX_FRAME_PIXELS)")
    assert err.value.path == str(path)



@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_pixel_cap_boundary(fmt, decoder, monkeypatch):
    monkeypatch.setattr(decode, "MAX_FRAME_PIXELS", 64)
    assert (decode.load_frame(_small(fmt), 8, 8, decoder=decoder) >= 76).all()  # 8×8 = 64 pixels: decoded
    buf = io.BytesIO()
    Image.fromarray(np.full((9, 8, 3), 77, np.uint8)).save(buf, format=fmt.upper())
    with pytest.raises(FrameError, match=r"^cannot decode frame \(stored bytes\): its header gives 8×9 pixels, "
                                         r"over the cap of 64 "):
        decode.load_frame(buf.getvalue(), 8, 8, decoder=decoder)


def test_pillow_decompression_bomb_is_a_frame_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.bmp"  # BMP: a header this module does not read, so PIL's own check meets it
    path.write_bytes(_claiming(_small("bmp"), "bmp", 20_000, 20_000))
    with pytest.raises(FrameError) as err:
        decode.load_frame(str(path), 8, 4)
    assert str(err.value).startswith(f"cannot decode frame {path}: Image size (400000000 pixels) exceeds limit")
    assert "\n" not in str(err.value) and isinstance(err.value, DatasetError)  # main's one-line handler
    # PIL's warning, turned into an error by the user's filters, is a frame error too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    path.write_bytes(_small("bmp"))  # 64 pixels: over 40 (warning), under 80 (error)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(FrameError, match="could be decompression bomb"):
            decode.load_frame(str(path), 8, 4)


def test_bomb_frames_are_skipped_like_any_bad_frame(tmp_path):
    good = tmp_path / "1.png"
    Image.fromarray(np.full((8, 4, 3), 60, np.uint8)).save(good)
    bomb = tmp_path / "2.bmp"
    bomb.write_bytes(_claiming(_small("bmp"), "bmp", 20_000, 20_000))
    huge = tmp_path / "3.jpg"
    huge.write_bytes(_claiming(_small("jpeg"), "jpeg", 60_000, 60_000))
    tracklets = (Tracklet(frames=(str(good), str(bomb), str(huge)), pid=0, camid=0),)
    out = np.full((3, 8, 4, 3), 9, np.uint8)
    spec = pipeline.ClipSpec(seq_len=3, height=8, width=4, skip_bad_frames=True)
    assert pipeline._decode_clip_or_skip(tracklets, 0, [0, 1, 2], spec, False, out) == 2
    assert (out == 60).all()  # both replaced by the good frame
    strict = pipeline.ClipSpec(seq_len=3, height=8, width=4)
    with pytest.raises(FrameError, match="2.bmp"):
        pipeline._decode_clip_or_skip(tracklets, 0, [0, 1, 2], strict, False, out)


# --- list files: paths stay inside the dataset folder, ids are ASCII digits -----------------------


def _touch(folder, names):
    os.makedirs(folder, exist_ok=True)
    for n in names:
        with open(os.path.join(folder, n), "wb") as f:
            f.write(b"\xff\xd8")


def _write_svreid(root, train_rows, query=(("7/a/1", "7", "a"),), gallery=(("8/a/2", "8", "a"),)):
    """An SVReID tree (root/SVReID/) whose lists hold the given (tracklet dir, pid, clothes) rows."""
    d = os.path.join(root, "SVReID")
    os.makedirs(d, exist_ok=True)
    for name, rows in (("train_svreid.txt", train_rows), ("query.txt", query), ("gallery.txt", gallery)):
        with open(os.path.join(d, name), "w", encoding="utf-8") as f:
            for tdir, pid, clothes in rows:
                f.write(f"{tdir} {pid} {clothes}\n")
                if not os.path.isabs(tdir):
                    _touch(os.path.normpath(os.path.join(d, tdir)), ["1.jpg", "2.jpg"])
    return d


def _load_error(name, root, **options):
    with pytest.raises(DatasetError) as err:
        datasets.load(name, str(root), **options)
    assert "\n" not in str(err.value)
    return str(err.value)


_GOOD = [("9/a/1", "9", "a"), ("10/a/0", "10", "a")]


def test_list_path_climbing_out_of_the_dataset_folder_is_refused(tmp_path):
    root = tmp_path / "data"
    outside = tmp_path / "private" / "1"
    _touch(outside, ["1.jpg"])
    d = _write_svreid(root, _GOOD + [("../../private/1", "11", "a")])
    assert _load_error("svreid", root) == (
        f"svreid: {d}/train_svreid.txt, line 3: the tracklet dir '../../private/1' leads out of the dataset folder "
        f"{d}; expected a path inside it")
    # A '..' that stays inside is only a spelling of a path inside.
    _write_svreid(root, _GOOD + [("9/../11/a/1", "11", "a")])
    assert datasets.load("svreid", str(root)).train[-1].frames[0] == os.path.join(d, "11", "a", "1", "1.jpg")


def test_absolute_list_path_is_refused(tmp_path):
    outside = tmp_path / "private" / "1"
    _touch(outside, ["1.jpg"])
    d = _write_svreid(tmp_path / "data", _GOOD, gallery=[("8/a/2", "8", "a"), (str(outside), "8", "a")])
    assert _load_error("svreid", tmp_path / "data") == (
        f"svreid: {d}/gallery.txt, line 2: the tracklet dir '{outside}' is an absolute path; expected a path "
        f"relative to the dataset folder {d}")


def test_symlinked_dataset_folder_is_read(tmp_path):
    """A dataset folder reached through a link, and a tracklet folder linked from another disk, are the
    owner's layout: read as they are."""
    real = tmp_path / "disk1" / "real"
    d = _write_svreid(real, _GOOD)
    other = tmp_path / "disk2" / "12" / "b" / "3"
    _touch(other, ["5.jpg"])
    os.makedirs(os.path.join(d, "12", "b"))
    os.symlink(other, os.path.join(d, "12", "b", "3"))
    with open(os.path.join(d, "train_svreid.txt"), "a") as f:
        f.write("12/b/3 12 b\n")
    os.symlink(real, tmp_path / "link")
    splits = datasets.load("svreid", str(tmp_path / "link"))
    assert splits.train[-1].frames == (str(tmp_path / "link" / "SVReID" / "12" / "b" / "3" / "5.jpg"),)
    assert len(splits.train) == 3


def test_ccvid_and_lsvid_paths_are_checked_too(tmp_path):
    ccvid = tmp_path / "ccvid"
    for name, rows in (("train.txt", ["session1/001_01 001 u1", "../x/001_02 001 u1"]),
                       ("query.txt", ["session1/005_01 005 u1"]), ("gallery.txt", ["session1/006_01 006 u1"])):
        os.makedirs(ccvid, exist_ok=True)
        (ccvid / name).write_text("\n".join(rows) + "\n")
    for tdir in ("session1/001_01", "x/001_02", "session1/005_01", "session1/006_01"):
        _touch(ccvid / tdir, ["1.jpg"])
    assert _load_error("ccvid", ccvid) == (
        f"ccvid: {ccvid}/train.txt, line 2: tracklet dir '../x/001_02' leads out of the dataset folder {ccvid}; "
        "expected a path inside it")

    import h5py
    lsvid = tmp_path / "lsvid"
    os.makedirs(lsvid / "list_sequence")
    (lsvid / "list_sequence" / "list_seq_train.txt").write_text("tracklet_train/0001/0001_01_02_ 1\n")
    (lsvid / "list_sequence" / "list_seq_test.txt").write_text("/etc/0002_01_03_ 2\n")
    _touch(lsvid / "tracklet_train" / "0001", ["0001_01_02_1.jpg"])
    os.makedirs(lsvid / "test" / "data")
    with h5py.File(lsvid / "test" / "data" / "info_test.mat", "w") as f:
        f.create_dataset("query", data=np.array([[1.0]]))
    assert _load_error("lsvid", lsvid) == (
        f"lsvid: {lsvid}/list_sequence/list_seq_test.txt, line 1: the path prefix '/etc/0002_01_03_' is an absolute "
        f"path; expected a path relative to the dataset folder {lsvid}")


def test_mars_frame_names_must_be_file_names(tmp_path):
    import scipy.io
    info = tmp_path / "info"
    os.makedirs(info)
    os.makedirs(tmp_path / "bbox_train")
    os.makedirs(tmp_path / "bbox_test")
    (info / "train_name.txt").write_text("0001C1T0001F001.jpg\n../../0001C1T0001F002.jpg\n")
    (info / "test_name.txt").write_text("0002C1T0001F001.jpg\n")
    scipy.io.savemat(info / "tracks_train_info.mat", {"track_train_info": np.array([[1.0, 2, 1, 1]])})
    scipy.io.savemat(info / "tracks_test_info.mat", {"track_test_info": np.array([[1.0, 1, 2, 1]])})
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.array([[1.0]])})
    assert _load_error("mars", tmp_path) == (
        f"mars: {info}/train_name.txt, line 2: '../../0001C1T0001F002.jpg' is not a file name; expected a bare "
        "frame name like 0001C1T0001F001.jpg")
    # Ids come from the .mat files: -1 (junk) and 0 (distractor) are MARS's, anything lower is not.
    (info / "train_name.txt").write_text("0001C1T0001F001.jpg\n0001C1T0001F002.jpg\n")
    scipy.io.savemat(info / "tracks_train_info.mat", {"track_train_info": np.array([[1.0, 2, -2, 1]])})
    message = _load_error("mars", tmp_path, check_frames=False)
    assert message.startswith(f"mars: {info}/tracks_train_info.mat, variable 'track_train_info', row 1: "
                              "[1, 2, -2, 1] is not a valid [start, end, pid, cam]")
    assert "pid >= -1 (-1 junk, 0 distractor)" in message


@pytest.mark.parametrize("pid", ["-1", "1_0", "\u0663", "+3", "3.0", "0x3", "\uff13", "\u00b2"])
def test_pids_must_be_ascii_digits(tmp_path, pid):
    d = _write_svreid(tmp_path, _GOOD, query=[("7/a/1", pid, "a")])
    assert _load_error("svreid", tmp_path) == (
        f"svreid: {d}/query.txt, line 1: the pid (2nd field) must be an integer in ASCII digits 0-9, got {pid!r}")


def test_leading_space_in_a_pid_cannot_reach_the_parser():
    """Fields are whitespace-split, so ' 3' never arrives as a token; the parser still refuses it."""
    from svreid_jax.data.datasets import _common
    for token in (" 3", "3 ", "", "-0", "-1"):
        with pytest.raises(DatasetError, match=r"^x: f, line 2: the pid must be an integer in ASCII digits 0-9, got "):
            _common.parse_id(token, "f, line 2", "x", "the pid")
    assert _common.parse_id("0017", "f", "x", "pid") == 17
    assert _common.parse_id("-1", "f", "x", "pid", junk=-1) == -1
    with pytest.raises(DatasetError, match=r"must be an integer in ASCII digits 0-9 \(or -1 for junk\), got '-2'$"):
        _common.parse_id("-2", "f", "x", "pid", junk=-1)


@pytest.mark.parametrize("camera", ["\u0663", "1_0", "+3"])
def test_camera_ids_must_be_ascii_digits(tmp_path, camera):
    d = _write_svreid(tmp_path, _GOOD + [(f"12/b/{camera}", "12", "b")])
    assert _load_error("svreid", tmp_path) == (
        f"svreid: {d}/train_svreid.txt, line 3: the camera (last folder of tracklet dir '12/b/{camera}') must be "
        f"an integer in ASCII digits 0-9, got {camera!r}")
    folder_root = tmp_path / "folder"
    _touch(folder_root / "3" / camera / "walk", ["1.jpg"])
    assert _load_error("folder", folder_root) == (
        f"folder: {folder_root}/3/{camera}: the camid folder name must be an integer in ASCII digits 0-9, "
        f"got {camera!r}")


def test_lsvid_keeps_its_junk_pid_and_refuses_other_signs(tmp_path):
    import h5py
    lsvid = tmp_path / "lsvid"
    os.makedirs(lsvid / "list_sequence")
    train = lsvid / "list_sequence" / "list_seq_train.txt"
    train.write_text("tracklet_train/0001/0001_01_02_ 1\ntracklet_train/0009/0009_01_02_ -1\n")
    (lsvid / "list_sequence" / "list_seq_test.txt").write_text("tracklet_test/0002/0002_01_03_ 2\n")
    _touch(lsvid / "tracklet_train" / "0001", ["0001_01_02_1.jpg"])
    _touch(lsvid / "tracklet_test" / "0002", ["0002_01_03_1.jpg"])
    os.makedirs(lsvid / "test" / "data")
    with h5py.File(lsvid / "test" / "data" / "info_test.mat", "w") as f:
        f.create_dataset("query", data=np.array([[1.0]]))
    splits, stats = datasets.load_with_stats("lsvid", str(lsvid))
    assert stats.junk_train == 1 and [t.pid for t in splits.train] == [0]
    train.write_text("tracklet_train/0001/0001_01_02_ 1\ntracklet_train/0009/0009_01_02_ -3\n")
    assert _load_error("lsvid", lsvid) == (
        f"lsvid: {train}, line 2: the pid (2nd field) must be an integer in ASCII digits 0-9 (or -1 for junk), "
        "got '-3'")
    train.write_text("tracklet_train/0001/0001_01_\u0663_ 1\n")
    _touch(lsvid / "tracklet_train" / "0001", ["0001_01_\u0663_1.jpg"])
    assert _load_error("lsvid", lsvid) == (
        f"lsvid: {train}, line 1: the camera (3rd '_' field of '0001_01_\u0663_1.jpg') must be an integer in ASCII "
        "digits 0-9, got '\u0663'")


def test_person_folder_numbers_read_ascii_digits_only(tmp_path):
    from svreid_jax.data.datasets import ilidsvid
    assert ilidsvid.person_number("person_0012", str(tmp_path), "ilidsvid") == 12
    with pytest.raises(DatasetError, match=r"person folder .*person_\u0663\u0664 has no number in its name"):
        ilidsvid.person_number("person_\u0663\u0664", str(tmp_path), "ilidsvid")


# --- demo data deletes only what it made ----------------------------------------------------------

TINY_DEMO = dict(num_source_ids=3, num_source_test_ids=2, num_target_train_ids=2, num_target_test_ids=2,
                 num_cameras=2, tracklets_per_id=(2, 2), frames_per_tracklet=(2, 2), num_distractors=1, num_junk=1,
                 height=16, width=8)


def _snapshot(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _real_data(folder):
    _touch(os.path.join(folder, "0001", "c1"), ["1.jpg", "2.jpg"])
    with open(os.path.join(folder, "train_svreid.txt"), "w") as f:
        f.write("0001/c1 1 a\n")
    return _snapshot(folder)


def test_demo_marks_what_it_makes_and_regenerates_it(tmp_path):
    from svreid_jax.data import demo
    paths = demo.generate(str(tmp_path / "demo"), **TINY_DEMO)
    for folder in (paths.source_root, paths.target_root):
        with open(os.path.join(folder, ".svreid_demo"), encoding="utf-8") as f:
            assert f.read() == "made by svreid_jax.data.demo; regenerating the demo deletes this folder\n"
    assert sorted(os.listdir(tmp_path / "demo")) == ["source", "target", "toy_stamp.json"]
    datasets.load("svreid", paths.source_root)  # the marker is invisible to the readers
    datasets.load("mars", paths.target_root)
    again = demo.ensure(str(tmp_path / "demo"), **{**TINY_DEMO, "seed": 1})  # other options: regenerated
    assert again == paths and os.path.isfile(os.path.join(paths.target_root, ".svreid_demo"))


@pytest.mark.parametrize("folder", ["source", "target"])
def test_demo_refuses_to_replace_a_folder_it_did_not_make(tmp_path, folder):
    from svreid_jax.data import demo
    root = tmp_path / "demo"
    before = _real_data(root / folder)
    for stamped in (False, True):
        if stamped:  # even beside a demo stamp (of other options): the marker decides
            demo.generate(str(tmp_path / "elsewhere"), **{**TINY_DEMO, "seed": 9})
            os.replace(tmp_path / "elsewhere" / "toy_stamp.json", root / "toy_stamp.json")
        with pytest.raises(DatasetError) as err:
            demo.ensure(str(root), **TINY_DEMO)
        assert str(err.value) == (f"demo: refusing to replace {root / folder}: it was not made by the demo (no "
                                  ".svreid_demo marker in it); move it away or point data.demo_root at a new or "
                                  "empty folder")
        assert _snapshot(root / folder) == before
        assert sorted(os.listdir(root)) == [folder] + ["toy_stamp.json"] * stamped  # the stamp kept too


def test_demo_refuses_a_non_empty_root_without_its_stamp(tmp_path):
    from svreid_jax.data import demo
    root = tmp_path / "mars"
    before = _real_data(root)
    with pytest.raises(DatasetError) as err:
        demo.generate(str(root), **TINY_DEMO)
    assert str(err.value) == (f"demo: refusing to write demo data into {root}: it holds '0001' and 1 other entries "
                              "but no demo stamp toy_stamp.json; point data.demo_root at a new or empty folder")
    assert _snapshot(root) == before and sorted(os.listdir(root)) == ["0001", "train_svreid.txt"]


def test_demo_never_follows_a_link_to_delete(tmp_path):
    from svreid_jax.data import demo
    root = str(tmp_path / "demo")
    paths = demo.generate(root, **TINY_DEMO)
    elsewhere = tmp_path / "mine"
    before = _real_data(elsewhere)
    with open(elsewhere / ".svreid_demo", "w") as f:  # even a marker behind a link is not enough
        f.write("x")
    os.rename(paths.target_root, tmp_path / "old_target")
    os.symlink(elsewhere, paths.target_root)
    with pytest.raises(DatasetError, match=r"^demo: refusing to replace .*/demo/target: it was not made by"):
        demo.ensure(root, **{**TINY_DEMO, "seed": 5})
    assert _snapshot(elsewhere) == {**before, ".svreid_demo": b"x"}


def test_demo_folders_without_markers_are_refused_even_beside_a_stamp(tmp_path):
    from svreid_jax.data import demo
    root = str(tmp_path / "demo")
    paths = demo.generate(root, **TINY_DEMO)
    os.remove(os.path.join(paths.source_root, ".svreid_demo"))
    before = _snapshot(root)
    assert demo.ensure(root, **TINY_DEMO) == paths  # the same options: nothing to delete, nothing refused
    with pytest.raises(DatasetError, match=f"^demo: refusing to replace {paths.source_root}: it was not made by"):
        demo.ensure(root, **{**TINY_DEMO, "seed": 2})
    assert _snapshot(root) == before


# --- the packer: reads first, keeps out of the dataset, swaps a new packing in whole ----------------


def _folder_dataset(root, value=0):
    for pid, n in ((4, 3), (7, 2)):
        tree = os.path.join(root, str(pid), "1", "t")
        os.makedirs(tree, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((4, 2, 3), value + i, np.uint8)).save(os.path.join(tree, f"{i}.png"))
    return str(root)


def _pack_cli(capsys, *args):
    from svreid_jax.data import pack
    code = pack.main(["pack", "--dataset=folder", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("where", ["inside", "same", "holds", "linked"])
def test_pack_refuses_an_output_folder_nested_with_the_root(tmp_path, capsys, where):
    root = _folder_dataset(tmp_path / "data")
    before = _snapshot(root)
    out = {"inside": f"{root}/packed", "same": root, "holds": str(tmp_path), "linked": str(tmp_path / "link")}[where]
    if where == "linked":  # the output reaches the dataset through a link
        os.symlink(root, out)
    code, stdout, err = _pack_cli(capsys, f"--root={root}", f"--out={out}")
    assert code == 1 and stdout == ""
    if where == "holds":
        assert err == (f"error: the dataset root (--root) {root} is inside the output folder (--out) {out}; choose "
                       "an output folder that does not hold the dataset\n")
    else:
        assert err == (f"error: the output folder (--out) {out} is inside the dataset root (--root) {root}; the "
                       "packing would become part of the dataset: choose an output folder outside it\n")
    assert _snapshot(root) == before and datasets.load("folder", root).train  # the root still reads


def test_pack_reads_the_dataset_before_making_any_folder(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "data")
    os.makedirs(os.path.join(root, "9", "x", "t"))  # a camera folder that is not a number
    code, _, err = _pack_cli(capsys, f"--root={root}", f"--out={tmp_path / 'out'}")
    assert code == 1 and err.count("\n") == 1 and "the camid folder name must be an integer" in err
    assert not os.path.exists(tmp_path / "out")


def test_failed_overwrite_keeps_the_previous_packing(tmp_path, capsys, monkeypatch):
    from svreid_jax.data import pack
    from svreid_jax.data.records import MissingFrameError
    root = _folder_dataset(tmp_path / "data")
    directory = pack.pack("folder", root, str(tmp_path / "out"), progress=False)
    before = _snapshot(directory)
    _folder_dataset(root, value=100)  # new pixels, same tracklets
    calls = []

    def vanishing(path):
        calls.append(path)
        if len(calls) == 4:  # half-way through the records
            raise MissingFrameError(f"frame listed in the dataset index is missing: {path}", path)
        return open(path, "rb").read()

    monkeypatch.setattr(decode, "read_frame_bytes", vanishing)
    code, _, err = _pack_cli(capsys, f"--root={root}", f"--out={tmp_path / 'out'}", "--overwrite")
    assert code == 1 and err == f"error: frame listed in the dataset index is missing: {calls[-1]}\n"
    assert _snapshot(directory) == before  # the old packing, whole
    assert os.listdir(os.path.dirname(directory)) == ["1.0.0"]  # no staging folder left beside it
    old = pack.load_packed(str(tmp_path / "out"))
    assert decode.load_frame(old.train.frame_bytes(0, 0), 4, 2)[0, 0, 0] == 0  # still the first packing's pixels
    monkeypatch.undo()
    # A rebuild that completes replaces it (here with one more tracklet).
    _touch(os.path.join(root, "9", "2", "t"), [])
    Image.fromarray(np.full((4, 2, 3), 50, np.uint8)).save(os.path.join(root, "9", "2", "t", "0.png"))
    assert pack.pack("folder", root, str(tmp_path / "out"), overwrite=True, progress=False) == directory
    packed = pack.load_packed(directory)
    assert [(t.pid, t.camid, len(t)) for t in packed.train] == [(0, 1, 3), (1, 1, 2), (2, 2, 1)]
    assert decode.load_frame(packed.train.frame_bytes(0, 0), 4, 2)[0, 0, 0] == 100
    assert decode.load_frame(packed.train.frame_bytes(2, 0), 4, 2)[0, 0, 0] == 50
    assert os.listdir(os.path.dirname(directory)) == ["1.0.0"]



# --- an empty target training split ------------------------------------------------------------------


def test_empty_target_train_split_is_a_one_line_data_error(tmp_path):
    root = tmp_path / "ccvid"
    os.makedirs(root)
    (root / "train.txt").write_text("\n")  # present, but lists nothing
    (root / "query.txt").write_text("session1/005_01 005 u1\n")
    (root / "gallery.txt").write_text("session1/006_01 006 u1\n")
    for tdir in ("session1/005_01", "session1/006_01"):
        _touch(root / tdir, ["1.jpg"])
    splits = datasets.load("ccvid", str(root))  # evaluation-only data reads fine
    assert splits.train == () and len(splits.query) == 1
    with pytest.raises(DatasetError) as err:
        datasets.require_split(splits.train, "train", "ccvid", f"the 'ccvid' reader on {root}", "target")
    assert str(err.value) == (f"data.target: the 'ccvid' reader on {root} gives an empty train split (0 tracklets); "
                              "it is read from train.txt")
    datasets.require_split(splits.query, "query", "ccvid", str(root), "target")  # not empty: no error
    # The stream itself refuses with a DatasetError too (main reports those in one line).
    spec = pipeline.ClipSpec(seq_len=2, height=8, width=4)
    with pytest.raises(DatasetError, match=r"^the target train split holds no tracklets; check the dataset root"):
        pipeline.target_stream(splits.train, batch_size=2, spec=spec, seed=0)


def test_every_registered_reader_names_its_lists():
    built_in = {"svreid", "svreid_cc", "svreid_plus", "mars", "ilidsvid", "prid", "lsvid", "ccvid", "folder"}
    assert set(datasets.SPLIT_FILES) == built_in and built_in <= set(datasets.names())
    assert all(set(files) == {"train", "query", "gallery"} for files in datasets.SPLIT_FILES.values())
    with pytest.raises(DatasetError, match=r"^data.source: /x gives an empty train split \(0 tracklets\); check that "
                                           r"dataset's train list or train folder$"):
        datasets.require_split((), "train", "mine", "/x", "source")  # a reader registered by the user
