"""Host-side frame decoding: JPEG/PNG bytes → resized, optionally mirrored uint8 frames and clips.

The host ships uint8 clips (4× less transfer than float32); the float maths (normalisation, random
erasing) runs inside the jitted step, in `svreid_jax.data.augment`.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

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
        with Image.open(io.BytesIO(data)) as img:
            if draft and img.format == "JPEG":
                img.draft("RGB", (width, height))
            if img.mode != "RGB":  # convert("RGB") of an RGB image would only copy it
                img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BICUBIC)
            if flip:  # PIL mirrors 4-byte pixels ~10x faster than numpy's strided 3-byte copy
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[...] = np.asarray(img)
    except OSError as err:
        raise FrameError(f"cannot decode frame {_describe(name)}: {_reason(err, data)}", _describe(name)) from None


def _describe(source) -> str:
    # Packed frames arrive as bytes; pack.PackedTracklets names the tracklet around this message.
    return "(stored bytes)" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def _reason(err: OSError, data: bytes) -> str:
    if not data:
        return "the file is empty (0 bytes)"
    if isinstance(err, UnidentifiedImageError):  # its message names an internal BytesIO, not the file
        return f"not an image PIL can read ({len(data)} bytes, starting {data[:4].hex()})"
    return str(err)


def _fast_into(out: np.ndarray, data: bytes, flip: bool, draft: bool) -> bool:
    """Decode a JPEG with simplejpeg into `out` [H, W, 3]; False when it must go through PIL instead."""
    try:
        src_h, src_w, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False
    if colorspace not in _FAST_COLORSPACES:
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
    from a full decode + bicubic resize, so it is off unless asked for.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "simplejpeg" and _simplejpeg is None:
        raise ImportError("decoder='simplejpeg' needs the simplejpeg package (pip install simplejpeg)")
    data = _read(source)
    if decoder != "pil" and _simplejpeg is not None and data[:3] == _JPEG_MAGIC:
        if _fast_into(out, data, flip, draft):
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
