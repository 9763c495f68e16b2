"""Procedural demo data: a synthetic source and a real-looking target, deterministic from a seed.

`generate(root)` writes

    root/source/SVReID/{train_svreid.txt, query.txt, gallery.txt}
    root/source/SVReID/<pid4>/<outfit>/<camera>/<n>.jpg       → datasets.load('svreid', root/source)
    root/target/info/{train_name.txt, test_name.txt, tracks_train_info.mat, tracks_test_info.mat, query_IDX.mat}
    root/target/bbox_{train,test}/<pid4>/<pid4>C<cam>T<tttt>F<fff>.jpg   → datasets.load('mars', root/target)
    root/toy_stamp.json                                       (written last; see `ensure`)

Scene model. A person is a handful of flat shapes (legs, arms, a patterned torso, head, hair, an
optional bag) whose look (colours, pattern, build, stature) is the identity. People walk: limbs
swing with a per-tracklet stride phase, the body bobs and drifts sideways, so frames differ.
Both domains draw their identities from the same distribution; they differ in how frames are made:

* source (synthetic): flat colours on a plain background whose colour is random per tracklet, the
  person centred and upright, no noise — the clean look of a rendered dataset;
* target (real-looking): each camera has its own textured scene (gradient, low-frequency texture,
  grain, clutter blobs in clothing-like colours), its own viewpoint (person scale, offset, aspect),
  blur, colour cast and gain, desaturation and sensor noise; detection boxes jitter per frame and
  some tracklets are partly occluded. The strength of each effect is a keyword of `generate`.

The camera effects are shared by all people in a camera, so a model that sees labelled target
tracklets can learn to see through them, while a model trained on the clean source meets colours,
textures and blur it never saw: that is the domain gap the demo measures.

`shift="hard"` (configs/demo.py:hard) makes a gap of another kind: what separates rendered from
filmed people in general rather than what separates one camera's scene from another's. Every target
camera shares one imaging chain and one detector, while the per-camera knobs above are expected to be
set mild (the config does: faint texture, few blobs, a small cast):

* pose and size statistics: target people are smaller and off-centre in their boxes (the detector
  pads generously), with a per-tracklet aspect; some boxes cut the feet off (truncated at the bottom);
* optics and sensor of film: low resolution (downsampled 1.6–2.4× and enlarged again), horizontal motion
  blur, vignetting, a film response (lifted blacks, compressed highlights, warm white balance);
* light that changes along a tracklet (a brightness ramp over its frames);
* strong JPEG compression (quality `_HARD_TARGET_JPEG`) of every target frame;

and the source renders differ in a way filmed people never do: a saturated flat palette (colours
pushed away from grey) with hard, un-anti-aliased silhouettes are what a cheap renderer gives.
The identities and their looks are the same as for the default shift; `shift="none"` (the default)
leaves every byte as it was.

Determinism: every tracklet, identity and camera draws from its own `np.random.Generator` keyed by
(seed, role, index), and `.mat` headers carry a fixed text instead of a timestamp, so the same
arguments give byte-identical files (with the same Pillow/libjpeg build).
"""
from __future__ import annotations

import colorsys
import dataclasses
import inspect
import io
import json
import math
import os
import shutil
from collections.abc import Sequence

import numpy as np
from PIL import Image

_STAMP = "toy_stamp.json"
# Bump whenever the generator's output changes, so stamps from older code force a regeneration.
_FORMAT_VERSION = 2

# The hard shift's imaging constants (see the module docstring): one chain for every target camera.
_SHIFTS = ("none", "hard")
_HARD_TARGET_JPEG = 35  # JPEG quality of the hard target's frames
_HARD_SATURATION = 1.6  # the hard source's colours: grey + this × (colour − grey)
_HARD_WHITE_BALANCE = np.array([1.07, 1.0, 0.86], np.float32)  # warm film cast, per RGB channel

# Role keys of the random streams (the second entry of every seed sequence).
_ROLE_LOOK, _ROLE_CAMERA, _ROLE_TRACK, _ROLE_LAYOUT = 1, 2, 3, 4

# Domain / split keys of tracklet streams.
_SOURCE_TRAIN, _SOURCE_TEST, _TARGET_TRAIN, _TARGET_TEST, _DISTRACTOR, _JUNK = range(6)


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where `generate` put the two domains."""

    source_root: str  # datasets.load('svreid', source_root)
    target_root: str  # datasets.load('mars', target_root)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *keys])


# ---------------------------------------------------------------------------------------------
# Identities: what a person looks like


@dataclasses.dataclass(frozen=True)
class _Look:
    """One identity (or one outfit of it). Colours are float RGB in [0, 1], shape [3]."""

    top: np.ndarray  # upper garment
    top2: np.ndarray  # its pattern colour
    pattern: int  # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 colour block
    period: float  # pattern period, fraction of body height
    top_length: float  # hem of the upper garment, fraction of body height from the top of the head
    bottom: np.ndarray  # trousers
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    bag: int  # 0 none, 1 on the left, 2 on the right (a shoulder bag at hip height)
    bag_colour: np.ndarray
    build: float  # body width factor
    stature: float  # body height factor (of the frame's person height)


def _colour(rng: np.random.Generator, neutral_prob: float) -> np.ndarray:
    """A clothing colour: a neutral (black/grey/white, slightly tinted) or a saturated hue."""
    hue = rng.random()
    if rng.random() < neutral_prob:
        sat, val = rng.uniform(0.0, 0.15), rng.uniform(0.08, 0.95)
    else:
        sat, val = rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32)


def _garments(rng: np.random.Generator) -> dict:
    """The clothing part of a look (what changes with an outfit)."""
    return dict(
        top=_colour(rng, 0.3), top2=_colour(rng, 0.3), pattern=int(rng.integers(0, 5)),
        period=float(rng.uniform(0.05, 0.10)), top_length=float(rng.uniform(0.50, 0.64)),
        bottom=_colour(rng, 0.5), shoes=_colour(rng, 0.7),
    )


def _draw_look(rng: np.random.Generator) -> _Look:
    tone = rng.random()
    skin = (1 - tone) * np.array([0.96, 0.80, 0.68]) + tone * np.array([0.36, 0.23, 0.15])
    hair_palette = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.08], [0.80, 0.66, 0.35],
                             [0.55, 0.55, 0.55], [0.55, 0.20, 0.08]])
    hair = hair_palette[rng.choice(5, p=[0.5, 0.2, 0.12, 0.1, 0.08])]
    return _Look(
        **_garments(rng), skin=skin.astype(np.float32), hair=hair.astype(np.float32),
        long_hair=bool(rng.random() < 0.3), bag=int(rng.choice(3, p=[0.6, 0.2, 0.2])),
        bag_colour=_colour(rng, 0.5), build=float(rng.uniform(0.8, 1.25)), stature=float(rng.uniform(0.86, 1.0)),
    )


def _outfit(look: _Look, rng: np.random.Generator) -> _Look:
    """The same person in other clothes (for clothes-changing sources, num_outfits > 1)."""
    return dataclasses.replace(look, **_garments(rng))


# ---------------------------------------------------------------------------------------------
# Motion and viewpoint: where the person is in each frame


@dataclasses.dataclass(frozen=True)
class _Pose:
    """Per-frame placement, each array [T, 1, 1] float32 (broadcasts against the pixel grid)."""

    cx: np.ndarray  # body centre x, pixels
    feet: np.ndarray  # y of the soles, pixels
    size: np.ndarray  # body height, pixels
    phase: np.ndarray  # stride phase, radians
    wide: float  # horizontal stretch of the body (camera aspect × build)
    side: float  # 0 = seen from the front/back, 1 = seen from the side
    facing: float  # +1 walking right, −1 walking left


@dataclasses.dataclass(frozen=True)
class _View:
    """Where a camera puts the person in its detection box (fractions of the frame)."""

    scale: float = 0.9  # body height / frame height
    dx: float = 0.0  # horizontal offset / frame width
    dy: float = 0.0  # vertical offset / frame height
    aspect: float = 1.0  # horizontal stretch
    jitter: float = 0.0  # per-frame box jitter, pixels at 64-pixel height


def _walk(rng: np.random.Generator, num_frames: int, height: int, width: int, view: _View, look: _Look) -> _Pose:
    t = np.arange(num_frames, dtype=np.float32)
    col = lambda a: np.asarray(a, np.float32).reshape(-1, 1, 1)  # noqa: E731
    side = float(rng.uniform(0.0, 1.0))
    facing = float(rng.choice([-1.0, 1.0]))
    cycle = rng.uniform(9.0, 15.0)  # frames per stride (two steps)
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * t / cycle
    size = height * view.scale * look.stature * (1 + rng.uniform(-0.04, 0.04) * (t / max(num_frames - 1, 1)))
    # Sideways drift inside the box: detectors lag behind walkers, more so in side views.
    drift = facing * side * rng.uniform(0.0, 0.2) * width / 32
    drift = np.clip(drift, -0.25 * width / max(num_frames, 1), 0.25 * width / max(num_frames, 1))
    px = height / 64.0
    jx = rng.normal(0.0, view.jitter * px, num_frames)
    jy = rng.normal(0.0, view.jitter * px, num_frames)
    cx = width * (0.5 + view.dx) + drift * (t - (num_frames - 1) / 2) + jx
    bob = 0.012 * size * np.abs(np.cos(phase))  # the body rises as the legs pass each other
    feet = 0.5 * (height + size) + view.dy * height - bob + jy
    return _Pose(cx=col(cx), feet=col(feet), size=col(size), phase=col(phase), wide=view.aspect * look.build,
                 side=side, facing=facing)


# ---------------------------------------------------------------------------------------------
# Rasterisation: soft-edged shapes on [T, H, W, 3] float canvases.
# Each shape is evaluated only inside the pixel window that its extent over all frames covers
# (limbs are small), which keeps generation fast; coordinates broadcast as [T, H, W].


class _Canvas:
    """A [T, H, W, 3] float32 frame stack and its pixel-centre grid."""

    def __init__(self, frames: np.ndarray, hard_edges: bool = False):
        self.frames = frames
        self.hard_edges = hard_edges  # all-or-nothing pixels: the aliased silhouettes of a cheap renderer
        _, height, width, _ = frames.shape
        self.ys = np.arange(height, dtype=np.float32).reshape(1, -1, 1) + 0.5  # [1, H, 1]
        self.xs = np.arange(width, dtype=np.float32).reshape(1, 1, -1) + 0.5  # [1, 1, W]

    def window(self, y0, y1, x0, x1):
        """(rows, cols) slices of the pixels within [y0, y1] × [x0, x1] (one pixel of margin), or None."""
        _, height, width, _ = self.frames.shape
        r0, r1 = max(0, int(np.floor(np.min(y0))) - 1), min(height, int(np.ceil(np.max(y1))) + 1)
        c0, c1 = max(0, int(np.floor(np.min(x0))) - 1), min(width, int(np.ceil(np.max(x1))) + 1)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, window, coverage: np.ndarray, colour) -> None:
        """frames ← frames + coverage·(colour − frames) inside `window`. colour [3] or [T, h, w, 3]."""
        view = self.frames[:, window[0], window[1]]
        if self.hard_edges:
            coverage = (coverage >= 0.5).astype(np.float32)
        view += coverage[..., None] * (colour - view)

    def capsule(self, ax, ay, bx, by, r, colour) -> None:
        """Paint the segment a→b thickened by radius r (all [T, 1, 1] or scalars)."""
        reach = np.max(r) + 1
        window = self.window(np.minimum(ay, by) - reach, np.maximum(ay, by) + reach,
                             np.minimum(ax, bx) - reach, np.maximum(ax, bx) + reach)
        if window is not None:
            self.paint(window, self._capsule_coverage(window, ax, ay, bx, by, r), colour)

    def _capsule_coverage(self, window, ax, ay, bx, by, r) -> np.ndarray:
        xs, ys = self.xs[..., window[1]], self.ys[:, window[0]]
        bax, bay = bx - ax, by - ay
        pax, pay = xs - ax, ys - ay
        h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay + 1e-6), 0.0, 1.0)
        dx, dy = pax - h * bax, pay - h * bay
        return np.clip(r + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)  # one pixel of anti-aliasing

    def box(self, x0, x1, y0, y1, colour) -> None:
        """Paint the axis-aligned box [x0, x1] × [y0, y1]."""
        window = self.window(y0, y1, x0, x1)
        if window is not None:
            xs, ys = self.xs[..., window[1]], self.ys[:, window[0]]
            d = np.maximum(np.maximum(x0 - xs, xs - x1), np.maximum(y0 - ys, ys - y1))
            self.paint(window, np.clip(0.5 - d, 0.0, 1.0), colour)

    def torso(self, look: _Look, cx, shoulder, hem, half_top, half_hem, size) -> None:
        """Paint a trapezoid from the shoulders (half width half_top) to the hem, in the look's pattern."""
        widest = np.maximum(half_top, half_hem)
        window = self.window(shoulder, hem, cx - widest, cx + widest)
        if window is None:
            return
        xs, ys = self.xs[..., window[1]], self.ys[:, window[0]]
        u = np.clip((ys - shoulder) / (hem - shoulder), 0.0, 1.0)
        half = half_top + (half_hem - half_top) * u
        d = np.maximum(np.abs(xs - cx) - half, np.maximum(shoulder - ys, ys - hem))
        mask = _pattern_mask(look, xs, ys, cx, shoulder, hem, size)
        fill = look.top + np.asarray(mask, np.float32)[..., None] * (look.top2 - look.top)
        self.paint(window, np.clip(0.5 - d, 0.0, 1.0), fill)

    def hair_cap(self, x, y, r, colour) -> None:
        """Paint the upper part of the head disc (centre x, y; radius r) in the hair colour."""
        window = self.window(y - r - 1, y + 1, x - r - 1, x + r + 1)
        if window is not None:
            coverage = self._capsule_coverage(window, x, y, x, y, r)
            coverage = coverage * np.clip(y - 0.1 * r - self.ys[:, window[0]] + 0.5, 0.0, 1.0)
            self.paint(window, coverage, colour)


def _pattern_mask(look: _Look, xs, ys, cx, shoulder, hem, size):
    """1 where the torso shows its second colour ([T, h, w]-broadcastable), 0 elsewhere."""
    period = look.period * size
    rows = np.floor((ys - shoulder) / period) % 2  # [T, h, 1]
    cols = np.floor((xs - cx) / period + 64) % 2  # [T, 1, w]
    if look.pattern == 1:
        return rows
    if look.pattern == 2:
        return cols
    if look.pattern == 3:
        return (rows + cols) % 2
    if look.pattern == 4:
        return (ys > 0.5 * (shoulder + hem)).astype(np.float32)
    return 0.0


def _render_person(frames: np.ndarray, look: _Look, pose: _Pose, hard_edges: bool = False) -> None:
    """Draw the walking person onto frames [T, H, W, 3] float32 in place, back to front."""
    canvas = _Canvas(frames, hard_edges)
    s, cx, wide = pose.size, pose.cx, pose.wide
    top = pose.feet - s
    swing = np.sin(pose.phase)
    stride = s * (0.025 + 0.10 * pose.side)  # foot travel; small when seen from the front
    spread = 1.0 - 0.6 * pose.side  # left/right joints overlap in a side view
    shoulder, hip, hem = top + 0.18 * s, top + 0.50 * s, top + look.top_length * s
    half_shoulder, half_hem = 0.13 * s * wide, 0.115 * s * wide
    shade = 1.0 - 0.2 * pose.side  # limbs on the far side are in the body's shadow

    def leg(sign, colour_scale):
        hip_x = cx + sign * 0.05 * s * wide * spread
        foot_x = hip_x + sign * 0.01 * s + pose.facing * stride * swing * sign
        lift = 0.03 * s * np.maximum(0.0, sign * swing) * (1 - pose.side)
        foot_y = pose.feet - 0.03 * s - lift
        canvas.capsule(hip_x, hip, foot_x, foot_y, 0.05 * s * wide, look.bottom * colour_scale)
        toe = 0.02 * s * pose.facing
        canvas.capsule(foot_x - toe, foot_y, foot_x + toe, foot_y, 0.03 * s, look.shoes * colour_scale)

    def arm(sign, colour_scale):
        shoulder_x = cx + sign * (half_shoulder - 0.03 * s) * spread
        hand_x = cx + sign * (half_shoulder + 0.01 * s) * spread - pose.facing * 0.7 * stride * swing * sign
        canvas.capsule(shoulder_x, shoulder + 0.03 * s, hand_x, top + 0.47 * s, 0.035 * s * wide,
                       look.top * colour_scale)
        canvas.capsule(hand_x, top + 0.48 * s, hand_x, top + 0.48 * s, 0.025 * s, look.skin)

    far = -pose.facing if pose.side > 0.3 else -1.0  # which side is drawn first
    leg(far, shade)
    arm(far, shade)
    leg(-far, 1.0)
    canvas.torso(look, cx, shoulder, hem, half_shoulder, half_hem, s)
    if look.bag:
        sign = -1.0 if look.bag == 1 else 1.0
        inner = cx + sign * half_hem * 0.9
        outer = inner + sign * 0.09 * s
        canvas.box(np.minimum(inner, outer), np.maximum(inner, outer), top + 0.42 * s, top + 0.56 * s,
                   look.bag_colour)
    arm(-far, 1.0)
    head_x, head_y, r = cx + 0.015 * s * pose.facing * pose.side, top + 0.085 * s, 0.07 * s
    if look.long_hair:
        canvas.capsule(head_x, head_y, head_x, shoulder + 0.06 * s, 0.065 * s, look.hair)
    canvas.capsule(head_x, head_y, head_x, head_y, r, look.skin)
    canvas.hair_cap(head_x, head_y, r, look.hair)


# ---------------------------------------------------------------------------------------------
# Domains: how a tracklet becomes frames


@dataclasses.dataclass(frozen=True)
class _Camera:
    """A target camera: its scene, viewpoint and imaging chain."""

    scene: np.ndarray  # [2H, 4W, 3] float32 background the detection boxes are cut from
    view: _View
    blur: float  # Gaussian sigma, pixels
    tint: np.ndarray  # [3] per-channel gain (mean 1): the colour cast
    gain: float  # overall brightness
    desaturate: float  # 0 keeps colours, 1 makes grey
    noise: float  # sensor noise std (in [0, 1] intensity units)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int], channels: int) -> np.ndarray:
    """Low-frequency texture [height, width, channels] in [0, 1]: a coarse random grid, bilinearly enlarged."""
    grid = rng.random((cells[0] + 1, cells[1] + 1, channels)).astype(np.float32)
    yi = np.linspace(0, cells[0], height, dtype=np.float32)
    xi = np.linspace(0, cells[1], width, dtype=np.float32)
    y0, x0 = np.minimum(yi.astype(int), cells[0] - 1), np.minimum(xi.astype(int), cells[1] - 1)
    fy, fx = (yi - y0)[:, None, None], (xi - x0)[None, :, None]
    g = lambda dy, dx: grid[y0 + dy][:, x0 + dx]  # noqa: E731
    return (1 - fy) * ((1 - fx) * g(0, 0) + fx * g(0, 1)) + fy * ((1 - fx) * g(1, 0) + fx * g(1, 1))


def _scene(rng: np.random.Generator, height: int, width: int, texture: float, clutter: int) -> np.ndarray:
    """A camera's background [height, width, 3]: wall/floor gradient, texture, grain and clutter blobs."""
    wall = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.45, 0.9)), np.float32)
    floor = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.7)), np.float32)
    horizon = rng.uniform(0.45, 0.75) * height
    y = np.arange(height, dtype=np.float32)[:, None, None]
    blend = 1 / (1 + np.exp(-(y - horizon) / (0.03 * height)))
    scene = (1 - blend) * wall + blend * floor + np.zeros((1, width, 1), np.float32)
    scene = scene * (1 + 0.5 * texture * (_smooth_noise(rng, height, width, (4, 8), 1) - 0.5))
    scene += 0.25 * texture * (_smooth_noise(rng, height, width, (10, 20), 3) - 0.5)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(clutter):
        # Half the blobs wear clothing colours, so colour alone cannot tell person from background.
        colour = _colour(rng, 0.4) if rng.random() < 0.5 else np.clip(wall * rng.uniform(0.5, 1.3), 0, 1)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.04, 0.25) * height, rng.uniform(0.02, 0.12) * width * 2
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        scene[inside] = colour * (1 + 0.2 * texture * (rng.random((int(inside.sum()), 1)) - 0.5))
    scene += rng.normal(0.0, 0.04 * texture, (height, width, 1)).astype(np.float32)  # static grain
    return np.clip(scene, 0.0, 1.0).astype(np.float32)


def _draw_camera(rng: np.random.Generator, height: int, width: int, o: dict) -> _Camera:
    v = o["viewpoint_strength"]
    view = _View(scale=float(0.86 - v * rng.uniform(0.0, 0.2)), dx=float(v * rng.uniform(-0.12, 0.12)),
                 dy=float(v * rng.uniform(-0.05, 0.05)), aspect=float(np.exp(v * rng.uniform(-0.2, 0.2))),
                 jitter=float(o["box_jitter"]))
    tint = np.exp(o["colour_cast"] * rng.uniform(-1.0, 1.0, 3)).astype(np.float32)
    return _Camera(
        scene=_scene(rng, 2 * height, 4 * width, o["texture_strength"], o["clutter_blobs"]),
        view=view,
        blur=float(rng.uniform(*o["blur_sigma"]) * height / 64),
        tint=tint / tint.mean(),
        gain=float(rng.uniform(*o["gain_range"])),
        desaturate=float(rng.uniform(*o["desaturation"])),
        noise=float(rng.uniform(*o["noise_std"])),
    )


def _gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [T, H, W, 3] over H and W (edges replicated)."""
    if sigma <= 0.05:
        return frames
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (1, 2):
        padded = np.pad(frames, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
        n = frames.shape[axis]
        frames = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return frames


def _source_frames(rng: np.random.Generator, look: _Look, num_frames: int, height: int, width: int,
                   shift: str = "none") -> np.ndarray:
    """Synthetic-looking tracklet: uint8 [T, H, W, 3], flat shapes on a plain random background.

    shift="hard": aliased edges and a saturated palette (colours pushed away from their grey).
    """
    background = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 0.95)), np.float32)
    canvas = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    view = _View(scale=float(rng.uniform(0.86, 0.94)), dx=float(rng.uniform(-0.03, 0.03)))
    hard = shift == "hard"
    _render_person(canvas, look, _walk(rng, num_frames, height, width, view, look), hard_edges=hard)
    if hard:
        grey = canvas.mean(axis=-1, keepdims=True)
        canvas = grey + _HARD_SATURATION * (canvas - grey)
    return _to_uint8(canvas)


def _target_frames(rng: np.random.Generator, look: _Look | None, num_frames: int, camera: _Camera,
                   o: dict) -> np.ndarray:
    """Real-looking tracklet in `camera`: uint8 [T, H, W, 3]. look=None renders background only (junk)."""
    height, width = o["height"], o["width"]
    hard = o.get("shift", "none") == "hard"
    canvas = _background_crops(rng, camera.scene, num_frames, height, width)
    if look is not None:
        view = camera.view
        if hard:
            view = _hard_view(rng, view)
        elif rng.random() < 0.1:  # now and then a badly placed box (partly out of frame)
            view = dataclasses.replace(view, dx=view.dx + float(rng.choice([-0.35, 0.35])))
        _render_person(canvas, look, _walk(rng, num_frames, height, width, view, look))
    if rng.random() < o["occlusion_prob"]:
        _occlude(rng, canvas, camera.scene)
    frames = _gaussian_blur(canvas, camera.blur)
    if hard:
        frames = _motion_blur(frames, float(rng.uniform(1.0, 3.0)) * height / 64)
    grey = frames.mean(axis=-1, keepdims=True)
    frames = grey + (1 - camera.desaturate) * (frames - grey)
    frames = frames * (camera.tint * camera.gain * rng.uniform(0.9, 1.1))  # cast, gain, per-tracklet light
    if hard:
        # Light that changes while the person walks (clouds, passing under lamps), then the lens falloff.
        ramp = 1 + rng.uniform(-0.35, 0.35) * (np.arange(num_frames) / max(num_frames - 1, 1) - 0.5)
        frames = frames * ramp.astype(np.float32).reshape(-1, 1, 1, 1) * _vignette(height, width)
    frames += rng.normal(0.0, camera.noise, frames.shape).astype(np.float32)
    if hard:
        return _low_resolution(_to_uint8(_film_response(frames)), float(rng.uniform(1.6, 2.4)))
    return _to_uint8(frames)


def _hard_view(rng: np.random.Generator, camera_view: _View) -> _View:
    """The hard target's detector: small, off-centre people, per-tracklet aspect, now and then cut-off feet."""
    if rng.random() < 0.3:
        dy = float(rng.uniform(0.12, 0.25))  # the box ends above the feet
    else:
        dy = float(rng.uniform(-0.08, 0.08))
    return dataclasses.replace(camera_view, scale=float(rng.uniform(0.6, 0.8)),
                               dx=camera_view.dx + float(rng.uniform(-0.16, 0.16)), dy=camera_view.dy + dy,
                               aspect=camera_view.aspect * float(np.exp(rng.uniform(-0.25, 0.25))))


def _motion_blur(frames: np.ndarray, length: float) -> np.ndarray:
    """Horizontal box blur of [T, H, W, 3] over about `length` pixels (edges replicated)."""
    radius = int(round((length - 1) / 2))
    if radius < 1:
        return frames
    padded = np.pad(frames, [(0, 0), (0, 0), (radius, radius), (0, 0)], mode="edge")
    width = frames.shape[2]
    return sum(padded[:, :, i:i + width] for i in range(2 * radius + 1)) / (2 * radius + 1)


def _vignette(height: int, width: int) -> np.ndarray:
    """[H, W, 1] lens falloff: 1 at the centre, 0.7 in the corners."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    x = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    r2 = 2 * (y[:, None] ** 2 + x[None, :] ** 2)  # 1 in the corners
    return (1 - 0.3 * r2)[..., None]


def _film_response(frames: np.ndarray) -> np.ndarray:
    """A filmed tone curve: lifted blacks, compressed highlights, warm white balance (intensity in [0, 1])."""
    x = np.clip(frames, 0.0, 1.0)
    curve = (1 - np.exp(-1.2 * x)) / (1 - np.exp(-1.2))
    return (0.05 + 0.9 * curve) * _HARD_WHITE_BALANCE


def _low_resolution(frames: np.ndarray, factor: float) -> np.ndarray:
    """uint8 [T, H, W, 3] shrunk by `factor` (box filter) and enlarged back (bilinear): a low-resolution sensor."""
    _, height, width, _ = frames.shape
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    out = [np.asarray(Image.fromarray(f).resize(small, Image.BOX).resize((width, height), Image.BILINEAR))
           for f in frames]
    return np.stack(out)


def _background_crops(rng: np.random.Generator, scene: np.ndarray, num_frames: int, height: int,
                      width: int) -> np.ndarray:
    """[T, H, W, 3] crops of `scene` that slide sideways over time, as a tracking box does."""
    scene_h, scene_w, _ = scene.shape
    y0 = int(rng.integers(0, scene_h - height + 1))
    speed = rng.uniform(-1.0, 1.0) * width / 32
    x_start = rng.uniform(0, scene_w - width)
    xs = np.clip(np.round(x_start + speed * np.arange(num_frames)), 0, scene_w - width).astype(int)
    cols = xs[:, None] + np.arange(width)[None, :]  # [T, W]
    return scene[y0:y0 + height][:, cols].transpose(1, 0, 2, 3).copy()  # [H, T, W, 3] → [T, H, W, 3]


def _occlude(rng: np.random.Generator, canvas: np.ndarray, scene: np.ndarray) -> None:
    """Cover part of the box (an object at the bottom or a pole at a side) for a run of frames, in place."""
    num_frames, height, width, _ = canvas.shape
    first = int(rng.integers(0, max(1, num_frames // 2)))
    last = int(rng.integers(first + max(1, num_frames // 2), num_frames + 1))
    colour = np.clip(scene[rng.integers(scene.shape[0]), rng.integers(scene.shape[1])] * rng.uniform(0.4, 1.2), 0, 1)
    texture = 0.1 * (rng.random((height, width, 1)).astype(np.float32) - 0.5)
    if rng.random() < 0.5:
        rows = slice(int(height * rng.uniform(0.6, 0.8)), height)
        cols = slice(0, width)
    else:
        span = int(width * rng.uniform(0.2, 0.35))
        cols = slice(0, span) if rng.random() < 0.5 else slice(width - span, width)
        rows = slice(0, height)
    canvas[first:last, rows, cols] = colour + texture[rows, cols]


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing


def _write_jpegs(folder: str, names: Sequence[str], frames: np.ndarray, quality: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, frame in zip(names, frames):
        # Fixed quality and subsampling, no optimisation pass: identical input → identical bytes.
        Image.fromarray(frame).save(os.path.join(folder, name), format="JPEG", quality=quality, subsampling=2)


def _write_text(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def _write_mat(path: str, key: str, array: np.ndarray) -> None:
    """A MATLAB v5 file holding `key`, with a fixed header (scipy stamps the creation time there)."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {key: array})
    data = bytearray(buffer.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by svreid_jax.data.toy".ljust(116, b" ")
    with open(path, "wb") as f:
        f.write(bytes(data))


def _tracklet_plan(rng: np.random.Generator, o: dict) -> list[tuple[int, int]]:
    """[(camera 0-based, num frames)] for one identity's tracklets: distinct cameras while there are enough."""
    lo, hi = o["tracklets_per_id"]
    n = int(rng.integers(lo, hi + 1))
    cams = o["num_cameras"]
    if n <= cams:
        chosen = rng.permutation(cams)[:n]
    else:
        chosen = np.concatenate([rng.permutation(cams), rng.integers(0, cams, n - cams)])
    lengths = rng.integers(o["frames_per_tracklet"][0], o["frames_per_tracklet"][1] + 1, n)
    return [(int(c), int(t)) for c, t in zip(chosen, lengths)]


def _write_source(folder: str, o: dict) -> None:
    """The SVReID-layout source under `folder` (= root/source/SVReID).

    Tracklet dirs are `<pid4>/<outfit>/<camera>`, so one identity has at most one tracklet per
    (outfit, camera): tracklets_per_id is capped at num_cameras here.
    """
    seed, height, width, quality = o["seed"], o["height"], o["width"], o["jpeg_quality"]
    lists = {"train_svreid.txt": [], "query.txt": [], "gallery.txt": []}
    groups = [(_SOURCE_TRAIN, i) for i in range(o["num_source_ids"])]
    groups += [(_SOURCE_TEST, i) for i in range(o["num_source_test_ids"])]
    for number, (role, index) in enumerate(groups, start=1):
        pid = f"{number:04d}"
        look_rng = _rng(seed, _ROLE_LOOK, role, index)
        outfits = [_draw_look(look_rng)]
        while len(outfits) < o["num_outfits"]:
            outfits.append(_outfit(outfits[0], look_rng))
        plan_rng = _rng(seed, _ROLE_LAYOUT, role, index)
        written = 0
        for outfit, look in enumerate(outfits):
            plan: dict[int, int] = {}  # camera → length; a repeated camera is dropped
            for cam, length in _tracklet_plan(plan_rng, o):
                plan.setdefault(cam, length)
            for cam, length in plan.items():
                tdir = f"{pid}/{outfit}/{cam}"
                frames = _source_frames(_rng(seed, _ROLE_TRACK, role, index, outfit, cam), look, length, height, width,
                                        o.get("shift", "none"))
                # Unpadded numbers: a lexicographic sort would put 10.jpg before 2.jpg.
                _write_jpegs(os.path.join(folder, tdir), [f"{i + 1}.jpg" for i in range(length)], frames, quality)
                if role == _SOURCE_TRAIN:
                    split = "train_svreid.txt"
                else:  # the first tracklet of a test identity is its query
                    split = "query.txt" if written == 0 else "gallery.txt"
                lists[split].append(f"{tdir} {pid} {outfit}")
                written += 1
    for name, lines in lists.items():
        _write_text(os.path.join(folder, name), lines)


def _choose_queries(cams: Sequence[int]) -> list[int]:
    """Up to two query tracklets of one test identity, each keeping a same-id other-camera gallery match."""
    queries: list[int] = []
    for i in range(len(cams)):
        if len(queries) == 2:
            break
        trial = queries + [i]
        rest = [c for j, c in enumerate(cams) if j not in trial]
        if all(any(c != cams[q] for c in rest) for q in trial):
            queries = trial
    return queries


def _write_target(folder: str, o: dict) -> None:
    """The MARS-layout target under `folder` (= root/target)."""
    seed = o["seed"]
    cameras = [_draw_camera(_rng(seed, _ROLE_CAMERA, c), o["height"], o["width"], o) for c in range(o["num_cameras"])]

    # Raw MARS pids are four digits with gaps; draw distinct ones for train and test people.
    pid_rng = _rng(seed, _ROLE_LAYOUT, _TARGET_TRAIN, 0)
    n_train, n_test = o["num_target_train_ids"], o["num_target_test_ids"]
    raw = np.sort(pid_rng.choice(np.arange(1, 1500), n_train + n_test, replace=False))
    order = pid_rng.permutation(n_train + n_test)
    train_pids, test_pids = np.sort(raw[order[:n_train]]), np.sort(raw[order[n_train:]])

    # tracks: (split, pid4, pid, camera 0-based, num frames, look or None, rng key, is_query)
    tracks = []
    for split, role, pids in (("train", _TARGET_TRAIN, train_pids), ("test", _TARGET_TEST, test_pids)):
        for index, pid in enumerate(pids.tolist()):
            look = _draw_look(_rng(seed, _ROLE_LOOK, role, index))
            plan = _tracklet_plan(_rng(seed, _ROLE_LAYOUT, role, index), o)
            queries = _choose_queries([c for c, _ in plan]) if split == "test" else []
            for k, (cam, length) in enumerate(plan):
                tracks.append((split, f"{pid:04d}", pid, cam, length, look, (role, index, k), k in queries))
    extra_rng = _rng(seed, _ROLE_LAYOUT, _DISTRACTOR, 0)
    lo, hi = o["frames_per_tracklet"]
    for k in range(o["num_distractors"]):  # pid 0: people who are nobody's match
        look = _draw_look(_rng(seed, _ROLE_LOOK, _DISTRACTOR, k))
        cam, length = int(extra_rng.integers(o["num_cameras"])), int(extra_rng.integers(lo, hi + 1))
        tracks.append(("test", "0000", 0, cam, length, look, (_DISTRACTOR, k, 0), False))
    for k in range(o["num_junk"]):  # pid −1: boxes with no person in them
        cam, length = int(extra_rng.integers(o["num_cameras"])), int(extra_rng.integers(lo, hi + 1))
        tracks.append(("test", "00-1", -1, cam, length, None, (_JUNK, k, 0), False))

    quality = o["jpeg_quality"]
    if o.get("shift", "none") == "hard":
        quality = min(quality, _HARD_TARGET_JPEG)
    info = os.path.join(folder, "info")
    os.makedirs(info, exist_ok=True)
    for split in ("train", "test"):
        # MARS lists frames in file-name order: pid4, camera, tracklet number, frame number.
        mine = sorted((t for t in tracks if t[0] == split), key=lambda t: (t[1], t[3], t[6]))
        names, rows, query_rows, counter = [], [], [], {}
        for row, (_, pid4, pid, cam, length, look, key, is_query) in enumerate(mine):
            number = counter[(pid4, cam)] = counter.get((pid4, cam), 0) + 1
            frame_names = [f"{pid4}C{cam + 1}T{number:04d}F{i + 1:03d}.jpg" for i in range(length)]
            frames = _target_frames(_rng(seed, _ROLE_TRACK, *key), look, length, cameras[cam], o)
            _write_jpegs(os.path.join(folder, f"bbox_{split}", pid4), frame_names, frames, quality)
            rows.append([len(names) + 1, len(names) + length, pid, cam + 1])
            names += frame_names
            if is_query:
                query_rows.append(row + 1)
        _write_text(os.path.join(info, f"{split}_name.txt"), names)
        _write_mat(os.path.join(info, f"tracks_{split}_info.mat"), f"track_{split}_info",
                   np.array(rows, np.float64).reshape(-1, 4))
        if split == "test":
            _write_mat(os.path.join(info, "query_IDX.mat"), "query_IDX", np.array([query_rows], np.float64))


# ---------------------------------------------------------------------------------------------
# Public API


def generate(
    root: str,
    *,
    seed: int = 0,
    num_source_ids: int = 80,
    num_source_test_ids: int = 10,
    num_target_train_ids: int = 50,
    num_target_test_ids: int = 50,
    num_cameras: int = 6,
    tracklets_per_id: tuple[int, int] = (3, 6),
    frames_per_tracklet: tuple[int, int] = (8, 40),
    num_outfits: int = 1,
    num_distractors: int = 6,
    num_junk: int = 3,
    height: int = 64,
    width: int = 32,
    jpeg_quality: int = 90,
    colour_cast: float = 0.2,
    gain_range: tuple[float, float] = (0.75, 1.2),
    desaturation: tuple[float, float] = (0.0, 0.3),
    noise_std: tuple[float, float] = (0.01, 0.04),
    blur_sigma: tuple[float, float] = (0.3, 0.8),
    texture_strength: float = 0.7,
    clutter_blobs: int = 6,
    viewpoint_strength: float = 1.0,
    box_jitter: float = 1.0,
    occlusion_prob: float = 0.2,
    shift: str = "none",
) -> DemoPaths:
    """Write the demo source and target under `root` (replacing earlier ones) and return their paths.

    Sizes:
      num_source_ids: labelled source training identities (train_svreid.txt).
      num_source_test_ids: source identities in query.txt (one tracklet each) / gallery.txt (the rest).
      num_target_train_ids, num_target_test_ids: disjoint target identities (bbox_train / bbox_test).
      num_cameras: cameras of both domains (≤ 9: MARS names hold one camera digit).
      tracklets_per_id: inclusive range of tracklets per identity (and per outfit), one camera each,
        distinct cameras while there are enough; test identities get up to two queries.
      frames_per_tracklet: inclusive range of tracklet lengths.
      num_outfits: outfits per source identity (> 1 makes a clothes-changing source).
      num_distractors: target test tracklets with pid 0 (people with no match).
      num_junk: target test tracklets with pid −1 (no person), which the MARS reader drops.
      height, width: frame size in pixels; jpeg_quality: fixed JPEG quality.
    Target strength knobs (0 or (0, 0) turns an effect off). The defaults were set with a proxy
    (tiny ResNet width 16, frame-level cross-entropy only, 700 steps of 64 frames, 8 frames per
    tracklet averaged, 100 queries): source-only 13 / oracle 49 target rank-1. Stronger settings
    (cast 0.35, noise 0.02–0.07, blur 0.5–1.2, texture 1, 10 blobs) gave 2 / 31, i.e. source-only
    at chance, which leaves adaptation nothing to start from.
      colour_cast: per-camera channel gains exp(±colour_cast), normalised to mean 1.
      gain_range: per-camera brightness factor range.
      desaturation: per-camera range of the mix towards grey.
      noise_std: per-camera range of the Gaussian sensor noise std (intensity in [0, 1]).
      blur_sigma: per-camera range of the Gaussian blur sigma, in pixels at height 64.
      texture_strength: contrast of the background texture and grain.
      clutter_blobs: blobs per camera scene (half of them in clothing colours).
      viewpoint_strength: how far each camera's person scale / offset / aspect departs from centred.
      box_jitter: per-frame detection-box jitter (pixels at height 64).
      occlusion_prob: chance that a target tracklet is partly covered.
    shift: 'none' (the per-camera scenes above) or 'hard' (adds a shared filmed-look chain and a
      different pose/size statistics to the target, a saturated aliased look to the source; module
      docstring). The stamp leaves out shift='none', so stamps written before it existed stay valid.

    Writes root/source, root/target, then root/toy_stamp.json (the parameters) last.
    """
    options = _stamp_options({k: v for k, v in locals().items() if k != "root"})
    _check(options)
    root = os.path.abspath(str(root))
    stamp = os.path.join(root, _STAMP)
    if os.path.exists(stamp):
        os.remove(stamp)  # from here until the end the tree is incomplete
    paths = DemoPaths(source_root=os.path.join(root, "source"), target_root=os.path.join(root, "target"))
    for folder in (paths.source_root, paths.target_root):
        shutil.rmtree(folder, ignore_errors=True)
    source_dir = os.path.join(paths.source_root, "SVReID")
    os.makedirs(source_dir)
    _write_source(source_dir, options)
    _write_target(paths.target_root, options)
    with open(stamp + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"format": _FORMAT_VERSION, "options": options}, f, indent=1, sort_keys=True)
    os.replace(stamp + ".tmp", stamp)
    return paths


def _check(o: dict) -> None:
    """ValueError for options that cannot make a dataset."""
    for key in ("tracklets_per_id", "frames_per_tracklet"):
        lo, hi = o[key]
        if not 1 <= lo <= hi:
            raise ValueError(f"toy: {key}={o[key]}; expected an inclusive range (lo, hi) with 1 <= lo <= hi")
    if not 1 <= o["num_cameras"] <= 9:
        raise ValueError(f"toy: num_cameras={o['num_cameras']}; expected 1..9 (MARS names hold one camera digit)")
    if o["height"] < 16 or o["width"] < 8:
        raise ValueError(f"toy: frames of {o['height']}×{o['width']} are too small; expected at least 16×8")
    for key in ("num_source_ids", "num_target_train_ids", "num_target_test_ids"):
        if o[key] < 1:
            raise ValueError(f"toy: {key}={o[key]}; expected at least 1")
    if o["num_outfits"] < 1:
        raise ValueError(f"toy: num_outfits={o['num_outfits']}; expected at least 1")
    if o.get("shift", "none") not in _SHIFTS:
        raise ValueError(f"toy: shift={o['shift']!r}; expected one of {_SHIFTS}")


def _normalise(options: dict) -> dict:
    """Options as JSON would store them (tuples → lists, numpy scalars → Python), for comparison."""
    return json.loads(json.dumps(options, default=lambda x: x.item() if hasattr(x, "item") else list(x)))


def _stamp_options(options: dict) -> dict:
    """`_normalise`d options without shift='none' (the default demo's stamp predates the shift option)."""
    options = _normalise(options)
    if options.get("shift") == "none":
        del options["shift"]
    return options


def _resolve(kwargs: dict) -> dict:
    """generate's full option set for these keyword arguments (unknown names raise TypeError)."""
    bound = inspect.signature(generate).bind("<root>", **kwargs)
    bound.apply_defaults()
    return _stamp_options({k: v for k, v in bound.arguments.items() if k != "root"})


def ensure(root: str, **kwargs) -> DemoPaths:
    """The demo data under `root`, generated only when needed.

    Returns at once when root/toy_stamp.json exists and records the same options (and generator
    version); otherwise (never generated, interrupted before the stamp, or other options) deletes
    root/source and root/target and generates afresh. Nothing else under `root` is touched.
    kwargs: as for `generate`.
    """
    options = _resolve(kwargs)
    root = os.path.abspath(str(root))
    try:
        with open(os.path.join(root, _STAMP), encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        stamp = None
    if stamp == {"format": _FORMAT_VERSION, "options": options}:
        return DemoPaths(source_root=os.path.join(root, "source"), target_root=os.path.join(root, "target"))
    return generate(root, **kwargs)
