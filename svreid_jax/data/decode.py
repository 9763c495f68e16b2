"""Host-side frame decoding: JPEG/PNG bytes → resized, optionally mirrored uint8 frames and clips.

The host ships uint8 clips (4× less transfer than float32); the float maths (normalisation, random
erasing) runs inside the jitted step, in `svreid_jax.data.augment`.

What a frame decodes to, whichever decoder reads it:
  * upright as displayed: an EXIF orientation (or the XMP one Pillow also reads) is applied before
    resizing (PIL.ImageOps.exif_transpose). The simplejpeg fast path reads the orientation from the
    JPEG's segments and hands oriented files to PIL, so both decoders give the same pixels;
  * 16-bit grey PNGs (PIL modes 'I;16*' and 'I') are scaled to 8 bits as round(v / 257), so mid-grey
    32896 is 128 (PIL's own convert would clip it to 255). 16-bit colour PNGs PIL already reduces to
    their high byte, which differs from round(v / 257) by at most 1;
  * at most MAX_FRAME_PIXELS pixels, checked from the header before any pixel is decoded: a corrupt
    or hostile header cannot make the loader allocate gigabytes. Over the cap, PIL's own
    DecompressionBombError or any other decode failure, the frame is a records.FrameError naming
    the file (so `skip_bad_frames` and the command line treat it like any broken frame).
"""
from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from svreid_jax.data.records import FrameError, MissingFrameError

DECODERS = ("auto", "pil", "simplejpeg")

try:  # libjpeg-turbo without PIL's per-image overhead: several times faster on small JPEGs (BENCHMARKS.md)
    import simplejpeg as _simplejpeg
except ImportError:  # the PIL path gives the same pixels, only slower
    _simplejpeg = None

_JPEG_MAGIC = b"\xff\xd8\xff"
# Colour spaces simplejpeg decodes to RGB exactly as PIL's convert("RGB") does (checked in the
# tests); CMYK/YCCK JPEGs go through PIL, whose Adobe-inversion handling we do not reimplement.
_FAST_COLORSPACES = ("YCbCr", "Gray")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Re-id frames are person crops of a few hundred pixels a side, and even full 8K video frames hold
# 33 megapixels: 50 megapixels leaves room for any real frame while bounding one decode's memory
# (150 MB of RGB). It sits below PIL's own warning threshold (about 89 megapixels), so PNG and JPEG
# headers over it are refused here before PIL would warn.
MAX_FRAME_PIXELS = 50_000_000

# PIL modes of 16-bit grey images (and 32-bit integer 'I', which PIL also uses for them).
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ORIENTATION_TAG = 0x0112
# Errors PIL raises for undecodable input; FrameError is handled before (it is an OSError and a ValueError).
_PIL_ERRORS = (OSError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _read(source) -> bytes:
    """A frame's encoded bytes from a path (folders), bytes (packed shards) or a file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingFrameError(f"frame listed in the dataset index is missing: {source}", str(source)) from None
    except OSError as err:
        raise FrameError(f"cannot read frame {source}: {err.strerror or err}", str(source)) from None


def read_frame_bytes(path) -> bytes:
    """The encoded bytes of a frame file (the packer stores them as they are): records.MissingFrameError or
    FrameError naming the file when it is missing or cannot be read."""
    return _read(path)


def _draft_scale(size: tuple[int, int], width: int, height: int) -> int:
    """The DCT scale PIL's Image.draft picks: the largest of 8, 4, 2 keeping both sides ≥ the target."""
    scale = min(size[0] // width, size[1] // height)
    for s in (8, 4, 2):
        if scale >= s:
            return s
    return 1


def _pil_into(out: np.ndarray, data: bytes, name, flip: bool, draft: bool) -> None:
    height, width = out.shape[:2]
    try:
        _check_size(_header_size(data), name)
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img.size, name)  # formats whose header _header_size does not read
            orientation = _pil_orientation(img)
            if draft and img.format == "JPEG":
                # draft sizes are in stored orientation; orientations 5..8 swap the axes.
                img.draft("RGB", (height, width) if orientation >= 5 else (width, height))
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode in _WIDE_GREY_MODES:
                img = _grey_to_8bit(img)
            if img.mode != "RGB":  # convert("RGB") of an RGB image would only copy it
                img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BICUBIC)
            if flip:  # PIL mirrors 4-byte pixels ~10x faster than numpy's strided 3-byte copy
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[...] = np.asarray(img)
    except FrameError:
        raise
    except _PIL_ERRORS as err:
        raise FrameError(f"cannot decode frame {_describe(name)}: {_reason(err, data)}", _describe(name)) from None


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image as 8-bit 'L': round(v / 257), so 0 → 0, 32896 → 128, 65535 → 255."""
    wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
    return Image.fromarray(((wide + 128) // 257).astype(np.uint8), mode="L")


def _pil_orientation(img: Image.Image) -> int:
    """The EXIF orientation 1..8 that exif_transpose would apply (1 when absent or not a valid value)."""
    if img.format == "JPEG" and "exif" not in img.info and "xmp" not in img.info:
        return 1  # nothing to read: skips building an Exif object for every plain frame
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except (struct.error, IndexError, KeyError, TypeError):  # a malformed EXIF block: the pixels still decode
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _check_size(size: tuple[int, int] | None, name) -> None:
    """FrameError when (width, height) holds more than MAX_FRAME_PIXELS pixels."""
    if size is not None and size[0] * size[1] > MAX_FRAME_PIXELS:
        where = _describe(name)
        raise FrameError(f"cannot decode frame {where}: its header gives {size[0]}×{size[1]} pixels, over the "
                         f"cap of {MAX_FRAME_PIXELS:,} (decode.MAX_FRAME_PIXELS)", where)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, without decoding; None otherwise."""
    if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:3] == _JPEG_MAGIC:
        return _jpeg_header(data)[0]
    return None


# JPEG markers that carry no length field, and the start-of-frame markers (SOF0..SOF15 but DHT,
# JPG and DAC) that hold the image size.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """((width, height) from the frame header, EXIF orientation) of a JPEG, read from its segments up to
    the scan. The orientation is 1 without an EXIF segment or tag, None when the EXIF cannot be read
    (the caller then lets PIL decide); the size is None when no frame header precedes the scan."""
    size, orientation, exif_seen = None, 1, False
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return size, None if exif_seen else orientation
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan (or end of image): the headers are over
            break
        length = (data[i + 2] << 8) | data[i + 3]
        segment = data[i + 4:i + 2 + length]
        if marker in _SOF and len(segment) >= 5 and size is None:
            height, width = struct.unpack(">HH", segment[1:5])
            size = (width, height)
        elif marker == 0xE1 and segment[:6] == b"Exif\x00\x00" and not exif_seen:
            exif_seen = True  # PIL reads the first EXIF segment only
            orientation = _exif_orientation(segment[6:])
        i += 2 + length
    return size, orientation


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of IFD0 of an EXIF block (1 if absent); None if the block does not parse."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    try:
        (offset,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[offset:offset + 2])
        for k in range(count):
            entry = tiff[offset + 2 + 12 * k:offset + 14 + 12 * k]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == _ORIENTATION_TAG:
                return struct.unpack(order + "H", entry[8:10])[0] if kind == 3 else None
    except struct.error:
        return None
    return 1


def _describe(source) -> str:
    # Packed frames arrive as bytes; pack.PackedTracklets names the tracklet around this message.
    return "(stored bytes)" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def _reason(err: OSError, data: bytes) -> str:
    if not data:
        return "the file is empty (0 bytes)"
    if isinstance(err, UnidentifiedImageError):  # its message names an internal BytesIO, not the file
        return f"not an image PIL can read ({len(data)} bytes, starting {data[:4].hex()})"
    return str(err)


def _upright(data: bytes) -> bool:
    """True when a JPEG certainly needs no orientation applied: neither an EXIF block nor XMP (whose
    tiff:Orientation PIL also honours) with another orientation than 1."""
    has_exif, has_xmp = b"Exif\x00\x00" in data, b"tiff:Orientation" in data
    if has_xmp:
        return False
    return not has_exif or _jpeg_header(data)[1] == 1


def _fast_into(out: np.ndarray, data: bytes, name, flip: bool, draft: bool) -> bool:
    """Decode a JPEG with simplejpeg into `out` [H, W, 3]; False when it must go through PIL instead
    (another colour space, an orientation to apply, or anything simplejpeg rejects)."""
    try:
        src_h, src_w, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False
    _check_size((src_w, src_h), name)
    if colorspace not in _FAST_COLORSPACES or not _upright(data):
        return False
    height, width = out.shape[:2]
    if (src_h, src_w) == (height, width):
        try:
            if flip:
                # Decoded as BGR, each row's bytes reversed read as RGB mirrored: one contiguous
                # 1-byte reversal instead of a strided copy of 3-byte pixels.
                bgr = _simplejpeg.decode_jpeg(data, colorspace="BGR")
                out.reshape(height, width * 3)[...] = bgr.reshape(height, width * 3)[:, ::-1]
            else:
                _simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        except ValueError:
            return False
        return True
    scale = _draft_scale((src_w, src_h), width, height) if draft else 1
    try:
        if scale > 1:
            # min sizes at exactly 1/scale make libjpeg-turbo pick PIL's draft scale.
            rgb = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=scale,
                                          min_height=-(-src_h // scale), min_width=-(-src_w // scale))
        else:
            rgb = _simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return False
    img = Image.fromarray(rgb)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BICUBIC)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out[...] = np.asarray(img)
    return True


def decode_into(out: np.ndarray, source, *, flip: bool = False, decoder: str = "auto",
                draft: bool = False) -> None:
    """Decode one image into out: uint8 [height, width, 3] (a view into a clip or batch buffer).

    Bicubic-resized like PIL interpolation=3, then mirrored when `flip`. source: a path, the
    encoded bytes, or a file object. decoder 'auto' uses simplejpeg for baseline/progressive
    YCbCr or grey JPEGs when installed and PIL otherwise; both give the same pixels when both link
    libjpeg-turbo (tests/data/test_decode_augment.py). draft=True decodes JPEGs at 1/2, 1/4 or 1/8 scale
    (PIL's Image.draft) when the target is at most that size: much faster, but the pixels differ
    from a full decode + bicubic resize, so it is off unless asked for. Frames are turned upright
    (EXIF orientation), 16-bit grey is scaled to 8 bits, and frames over MAX_FRAME_PIXELS are refused
    (module docstring); any frame that cannot be decoded raises records.FrameError naming it.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "simplejpeg" and _simplejpeg is None:
        raise ImportError("decoder='simplejpeg' needs the simplejpeg package (pip install simplejpeg)")
    data = _read(source)
    if decoder != "pil" and _simplejpeg is not None and data[:3] == _JPEG_MAGIC:
        if _fast_into(out, data, source, flip, draft):
            return
    _pil_into(out, data, source, flip, draft)


def load_frame(path, height: int, width: int, *, decoder: str = "auto", draft: bool = False) -> np.ndarray:
    """Decode one image file to uint8 [height, width, 3], bicubic-resized like PIL interpolation=3."""
    out = np.empty((height, width, 3), np.uint8)
    decode_into(out, path, decoder=decoder, draft=draft)
    return out


def load_clip(frames: Sequence, indices: Sequence[int], height: int, width: int, flip: bool, *,
              decoder: str = "auto", draft: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """Decode the selected frames of a tracklet. Returns uint8 [T, height, width, 3].

    frames: paths, encoded bytes or file objects. flip mirrors every frame of the clip, so the
    whole clip shares one decision. Frames decode straight into `out` (e.g. a slot of a batch
    buffer) when given, which is then returned, else into a new array.
    """
    shape = (len(indices), height, width, 3)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out is {out.dtype} {out.shape}; expected uint8 {shape}")
    clip = out
    for t, i in enumerate(indices):
        decode_into(clip[t], frames[i], flip=flip, decoder=decoder, draft=draft)
    return clip
