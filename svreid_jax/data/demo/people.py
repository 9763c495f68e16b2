"""The demo's people: what an identity looks like, how it walks, and how it is drawn.

A person is a handful of flat shapes (legs, arms, a patterned torso, head, hair, an optional bag)
whose look (colours, pattern, build, stature) is the identity. People walk: limbs swing with a
per-tracklet stride phase, the body bobs and drifts sideways, so frames differ. Both domains draw
their identities from this one distribution; scenes.py decides what surrounds them and how they are
filmed.

Every function takes the `np.random.Generator` it draws from; callers own the streams (layouts.py).
"""
from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

# ---------------------------------------------------------------------------------------------
# Identities: what a person looks like


@dataclasses.dataclass(frozen=True)
class Look:
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


def clothing_colour(rng: np.random.Generator, neutral_prob: float) -> np.ndarray:
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
        top=clothing_colour(rng, 0.3), top2=clothing_colour(rng, 0.3), pattern=int(rng.integers(0, 5)),
        period=float(rng.uniform(0.05, 0.10)), top_length=float(rng.uniform(0.50, 0.64)),
        bottom=clothing_colour(rng, 0.5), shoes=clothing_colour(rng, 0.7),
    )


def draw_look(rng: np.random.Generator) -> Look:
    """A new identity: skin, hair, build and stature, and its first outfit."""
    tone = rng.random()
    skin = (1 - tone) * np.array([0.96, 0.80, 0.68]) + tone * np.array([0.36, 0.23, 0.15])
    hair_palette = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.08], [0.80, 0.66, 0.35],
                             [0.55, 0.55, 0.55], [0.55, 0.20, 0.08]])
    hair = hair_palette[rng.choice(5, p=[0.5, 0.2, 0.12, 0.1, 0.08])]
    return Look(
        **_garments(rng), skin=skin.astype(np.float32), hair=hair.astype(np.float32),
        long_hair=bool(rng.random() < 0.3), bag=int(rng.choice(3, p=[0.6, 0.2, 0.2])),
        bag_colour=clothing_colour(rng, 0.5), build=float(rng.uniform(0.8, 1.25)),
        stature=float(rng.uniform(0.86, 1.0)),
    )


def draw_outfit(look: Look, rng: np.random.Generator) -> Look:
    """The same person in other clothes (for clothes-changing sources, num_outfits > 1)."""
    return dataclasses.replace(look, **_garments(rng))


# ---------------------------------------------------------------------------------------------
# Motion and viewpoint: where the person is in each frame


@dataclasses.dataclass(frozen=True)
class Pose:
    """Per-frame placement, each array [T, 1, 1] float32 (broadcasts against the pixel grid)."""

    cx: np.ndarray  # body centre x, pixels
    feet: np.ndarray  # y of the soles, pixels
    size: np.ndarray  # body height, pixels
    phase: np.ndarray  # stride phase, radians
    wide: float  # horizontal stretch of the body (camera aspect × build)
    side: float  # 0 = seen from the front/back, 1 = seen from the side
    facing: float  # +1 walking right, −1 walking left


@dataclasses.dataclass(frozen=True)
class View:
    """Where a camera puts the person in its detection box (fractions of the frame)."""

    scale: float = 0.9  # body height / frame height
    dx: float = 0.0  # horizontal offset / frame width
    dy: float = 0.0  # vertical offset / frame height
    aspect: float = 1.0  # horizontal stretch
    jitter: float = 0.0  # per-frame box jitter, pixels at 64-pixel height


def walk(rng: np.random.Generator, num_frames: int, height: int, width: int, view: View, look: Look) -> Pose:
    """Where a person walking through a height × width pixel box is in each of num_frames frames."""
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
    return Pose(cx=col(cx), feet=col(feet), size=col(size), phase=col(phase), wide=view.aspect * look.build,
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

    def torso(self, look: Look, cx, shoulder, hem, half_top, half_hem, size) -> None:
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


def _pattern_mask(look: Look, xs, ys, cx, shoulder, hem, size):
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


def render_person(frames: np.ndarray, look: Look, pose: Pose, hard_edges: bool = False) -> None:
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

