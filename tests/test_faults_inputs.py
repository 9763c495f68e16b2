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

from svreid_jax.data import decode, pipeline
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
