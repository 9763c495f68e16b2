"""Procedural demo data: a synthetic source and a real-looking target, deterministic from a seed.

`generate(root)` writes

    root/source/SVReID/...      → datasets.load('svreid', root/source)
    root/target/...             → datasets.load('mars', root/target)
    root/toy_stamp.json         (written last; see `ensure`)

and `ensure(root)` does so only when root holds no complete demo made with the same options.

Regenerating deletes root/source and root/target, so the demo only ever deletes folders it made:
each one gets a marker file (`.svreid_demo`) before anything else is written into it, and a folder
without it is refused (records.DatasetError naming it), as is a non-empty root that holds neither
the stamp nor only marked folders: a `data.demo_root` pointed at real data leaves it as it was.
(Demo folders written before markers existed are refused too, once their options change: delete
them by hand.) The marker is outside the tracklet files, which stay byte-identical.

The modules below split the generator by what it draws:

* people.py: identities (body, clothing, hair, bag), their walk, and how a person is drawn;
* scenes.py: the two domains' imaging: the source's plain rendered look, the target cameras'
  scenes, viewpoints and imaging chains, and the hard shift's filmed look;
* layouts.py: who is filmed by which camera, the splits, distractors and junk, and the SVReID-like
  source and MARS-like target folders and lists.

Both domains draw their identities from the same distribution and differ in how frames are made
(scenes.py): that difference is the domain gap the demo measures.

Determinism: every tracklet, identity and camera draws from its own `np.random.Generator` keyed by
(seed, role, index), and `.mat` headers carry a fixed text instead of a timestamp, so the same
arguments give byte-identical files (with the same numpy, Pillow and libjpeg builds);
tests/data/test_demo_data.py pins the bytes of two small configurations.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil

from svreid_jax.data.demo import layouts, scenes
from svreid_jax.data.records import DatasetError
from svreid_jax.utils import atomic

_STAMP = "toy_stamp.json"  # the name demo folders already on disk carry
_MARKER = ".svreid_demo"  # in every folder generate creates and may delete again
_MARKER_TEXT = "made by svreid_jax.data.demo; regenerating the demo deletes this folder\n"
_FOLDERS = ("source", "target")
# Bump whenever the generator's output changes, so stamps of data made by other code force a regeneration.
_FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where `generate` put the two domains."""

    source_root: str  # datasets.load('svreid', source_root)
    target_root: str  # datasets.load('mars', target_root)


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
      different pose/size statistics to the target, a saturated aliased look to the source; see
      scenes.py). The stamp leaves out shift='none', so that a default demo's stamp without a shift
      entry still matches.

    Writes root/source, root/target, then root/toy_stamp.json (the parameters) last.
    """
    options = _stamp_options({k: v for k, v in locals().items() if k != "root"})
    _check(options)
    root = os.path.abspath(str(root))
    _check_ownership(root)  # before anything under root is touched
    stamp = os.path.join(root, _STAMP)
    if os.path.exists(stamp):
        os.remove(stamp)  # from here until the end the tree is incomplete
    paths = DemoPaths(source_root=os.path.join(root, "source"), target_root=os.path.join(root, "target"))
    for folder in (paths.source_root, paths.target_root):
        if os.path.lexists(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        with open(os.path.join(folder, _MARKER), "w", encoding="utf-8") as f:
            f.write(_MARKER_TEXT)
    source_dir = os.path.join(paths.source_root, "SVReID")
    os.makedirs(source_dir)
    layouts.write_source(source_dir, options)
    layouts.write_target(paths.target_root, options)
    atomic.write_text(stamp, json.dumps({"format": _FORMAT_VERSION, "options": options}, indent=1, sort_keys=True))
    return paths


def _has_stamp(root: str) -> bool:
    """Whether root holds a demo stamp of any version (the demo has written there before)."""
    try:
        with open(os.path.join(root, _STAMP), encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and set(stamp) == {"format", "options"}


def _marked(folder: str) -> bool:
    # A link is never ours to delete, wherever it points (rmtree would refuse it anyway).
    return not os.path.islink(folder) and os.path.isfile(os.path.join(folder, _MARKER))


def _ours(name: str) -> bool:
    """Entries of root that generate itself leaves: the stamp's temporary files."""
    return name == _STAMP or name.startswith((f".{_STAMP}.tmp-", f"{_STAMP}.tmp"))


def _check_ownership(root: str) -> None:
    """DatasetError unless everything generate would delete under `root` is demo data (module docstring)."""
    if os.path.lexists(root) and not os.path.isdir(root):
        raise DatasetError(f"demo: data.demo_root {root} is not a folder; point it at a new or empty folder")
    for name in _FOLDERS:
        folder = os.path.join(root, name)
        if os.path.lexists(folder) and not _marked(folder):
            raise DatasetError(f"demo: refusing to replace {folder}: it was not made by the demo (no {_MARKER} "
                               "marker in it); move it away or point data.demo_root at a new or empty folder")
    if _has_stamp(root) or not os.path.isdir(root):
        return
    foreign = sorted(n for n in os.listdir(root) if not (n in _FOLDERS or _ours(n)))
    if foreign:
        more = f" and {len(foreign) - 1} other entries" if len(foreign) > 1 else ""
        raise DatasetError(f"demo: refusing to write demo data into {root}: it holds {foreign[0]!r}{more} but no "
                           f"demo stamp {_STAMP}; point data.demo_root at a new or empty folder")


def _check(o: dict) -> None:
    """ValueError for options that cannot make a dataset."""
    for key in ("tracklets_per_id", "frames_per_tracklet"):
        lo, hi = o[key]
        if not 1 <= lo <= hi:
            raise ValueError(f"demo: {key}={o[key]}; expected an inclusive range (lo, hi) with 1 <= lo <= hi")
    if not 1 <= o["num_cameras"] <= 9:
        raise ValueError(f"demo: num_cameras={o['num_cameras']}; expected 1..9 (MARS names hold one camera digit)")
    if o["height"] < 16 or o["width"] < 8:
        raise ValueError(f"demo: frames of {o['height']}×{o['width']} are too small; expected at least 16×8")
    for key in ("num_source_ids", "num_target_train_ids", "num_target_test_ids"):
        if o[key] < 1:
            raise ValueError(f"demo: {key}={o[key]}; expected at least 1")
    if o["num_outfits"] < 1:
        raise ValueError(f"demo: num_outfits={o['num_outfits']}; expected at least 1")
    if o.get("shift", "none") not in scenes.SHIFTS:
        raise ValueError(f"demo: shift={o['shift']!r}; expected one of {scenes.SHIFTS}")


def _normalise(options: dict) -> dict:
    """Options as JSON would store them (tuples → lists, numpy scalars → Python), for comparison."""
    return json.loads(json.dumps(options, default=lambda x: x.item() if hasattr(x, "item") else list(x)))


def _stamp_options(options: dict) -> dict:
    """`_normalise`d options without shift='none', so default demos match stamps that have no shift entry."""
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
    root/source and root/target and generates afresh. Nothing else under `root` is touched, and
    folders the demo did not make are refused, not deleted (module docstring).
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
