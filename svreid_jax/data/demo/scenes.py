"""The demo's two domains: how a tracklet of a person becomes frames.

* source (synthetic): flat colours on a plain background whose colour is random per tracklet, the
  person centred and upright, no noise: the clean look of a rendered dataset;
* target (real-looking): each camera has its own textured scene (gradient, low-frequency texture,
  grain, clutter blobs in clothing-like colours), its own viewpoint (person scale, offset, aspect),
  blur, colour cast and gain, desaturation and sensor noise; detection boxes jitter per frame and
  some tracklets are partly occluded. The strength of each effect is a keyword of `demo.generate`.

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
* strong JPEG compression (quality `HARD_TARGET_JPEG`) of every target frame;

and the source renders differ in a way filmed people never do: a saturated flat palette (colours
pushed away from grey) with hard, un-anti-aliased silhouettes are what a cheap renderer gives.
The identities and their looks are the same as for the default shift, and `shift="none"` (the
default) makes none of the hard shift's draws, so its frames do not depend on that code.
"""
from __future__ import annotations

import colorsys
import dataclasses
import math

import numpy as np
from PIL import Image

from svreid_jax.data.demo import people

SHIFTS = ("none", "hard")  # generate's `shift` values
# The hard shift's imaging constants (module docstring): one chain shared by every target camera.
HARD_TARGET_JPEG = 35  # JPEG quality of the hard target's frames
_HARD_SATURATION = 1.6  # the hard source's colours: grey + this × (colour − grey)
_HARD_WHITE_BALANCE = np.array([1.07, 1.0, 0.86], np.float32)  # warm film cast, per RGB channel


@dataclasses.dataclass(frozen=True)
class Camera:
    """A target camera: its scene, viewpoint and imaging chain."""

    scene: np.ndarray  # [2H, 4W, 3] float32 background the detection boxes are cut from
    view: people.View
    blur: float  # Gaussian sigma, pixels
    tint: np.ndarray  # [3] per-channel gain (mean 1): the colour cast
    gain: float  # overall brightness
    desaturate: float  # 0 keeps colours, 1 makes grey
    noise: float  # sensor noise std (in [0, 1] intensity units)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int],
                  channels: int) -> np.ndarray:
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
        if rng.random() < 0.5:
            colour = people.clothing_colour(rng, 0.4)
        else:
            colour = np.clip(wall * rng.uniform(0.5, 1.3), 0, 1)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.04, 0.25) * height, rng.uniform(0.02, 0.12) * width * 2
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        scene[inside] = colour * (1 + 0.2 * texture * (rng.random((int(inside.sum()), 1)) - 0.5))
    scene += rng.normal(0.0, 0.04 * texture, (height, width, 1)).astype(np.float32)  # static grain
    return np.clip(scene, 0.0, 1.0).astype(np.float32)


def draw_camera(rng: np.random.Generator, height: int, width: int, o: dict) -> Camera:
    """A target camera for height × width pixel frames; o: generate's options (its strength knobs)."""
    v = o["viewpoint_strength"]
    view = people.View(scale=float(0.86 - v * rng.uniform(0.0, 0.2)), dx=float(v * rng.uniform(-0.12, 0.12)),
                       dy=float(v * rng.uniform(-0.05, 0.05)), aspect=float(np.exp(v * rng.uniform(-0.2, 0.2))),
                       jitter=float(o["box_jitter"]))
    tint = np.exp(o["colour_cast"] * rng.uniform(-1.0, 1.0, 3)).astype(np.float32)
    return Camera(
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


def source_frames(rng: np.random.Generator, look: people.Look, num_frames: int, height: int, width: int,
                  shift: str = "none") -> np.ndarray:
    """Synthetic-looking tracklet: uint8 [T, H, W, 3], flat shapes on a plain random background.

    shift="hard": aliased edges and a saturated palette (colours pushed away from their grey).
    """
    background = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 0.95)), np.float32)
    canvas = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    view = people.View(scale=float(rng.uniform(0.86, 0.94)), dx=float(rng.uniform(-0.03, 0.03)))
    hard = shift == "hard"
    people.render_person(canvas, look, people.walk(rng, num_frames, height, width, view, look), hard_edges=hard)
    if hard:
        grey = canvas.mean(axis=-1, keepdims=True)
        canvas = grey + _HARD_SATURATION * (canvas - grey)
    return _to_uint8(canvas)


def target_frames(rng: np.random.Generator, look: people.Look | None, num_frames: int, camera: Camera,
                  o: dict) -> np.ndarray:
    """Real-looking tracklet in `camera`: uint8 [T, H, W, 3]. look=None renders background only (junk).

    o: generate's options (frame size, occlusion_prob, shift).
    """
    height, width = o["height"], o["width"]
    hard = o.get("shift", "none") == "hard"
    canvas = _background_crops(rng, camera.scene, num_frames, height, width)
    if look is not None:
        view = camera.view
        if hard:
            view = _hard_view(rng, view)
        elif rng.random() < 0.1:  # now and then a badly placed box (partly out of frame)
            view = dataclasses.replace(view, dx=view.dx + float(rng.choice([-0.35, 0.35])))
        people.render_person(canvas, look, people.walk(rng, num_frames, height, width, view, look))
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


def _hard_view(rng: np.random.Generator, camera_view: people.View) -> people.View:
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
    """Intensities in [0, 1] (clipped) → uint8 in [0, 255], same shape."""
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
