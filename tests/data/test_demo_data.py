"""Procedural demo data: determinism, the completion stamp, sizes and motion."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image, features

from svreid_jax.data import demo as demo_data
from svreid_jax.data.demo import layouts

SMALL = dict(num_source_ids=4, num_source_test_ids=2, num_target_train_ids=3, num_target_test_ids=3,
             num_cameras=3, tracklets_per_id=(2, 3), frames_per_tracklet=(8, 12), num_distractors=2, num_junk=1,
             height=32, width=16)


def _tree_digest(root) -> dict[str, str]:
    """sha256 of every file under root but the demo's ownership markers (tested in test_faults_inputs.py)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name == demo_data._MARKER:
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return demo_data.generate(str(root), **SMALL)


def test_same_seed_same_bytes(tmp_path):
    a = demo_data.generate(str(tmp_path / "a"), seed=3, **SMALL)
    b = demo_data.generate(str(tmp_path / "b"), seed=3, **SMALL)
    digest_a, digest_b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert len(digest_a) > 100 and digest_a == digest_b
    assert a.source_root == str(tmp_path / "a" / "source") and a.target_root == str(tmp_path / "a" / "target")
    assert any(k.endswith(".mat") for k in digest_a)  # .mat files too (no timestamp in their header)


def test_other_seed_other_bytes(tmp_path):
    demo_data.generate(str(tmp_path / "a"), seed=0, **SMALL)
    demo_data.generate(str(tmp_path / "b"), seed=1, **SMALL)
    digest_a, digest_b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    common = set(digest_a) & set(digest_b) - {"toy_stamp.json"}
    jpgs = [k for k in common if k.endswith(".jpg")]
    assert jpgs and sum(digest_a[k] != digest_b[k] for k in jpgs) == len(jpgs)


def test_ensure_generates_once_and_records_options(tmp_path):
    root = str(tmp_path / "demo")
    paths = demo_data.ensure(root, **SMALL)
    marker = os.path.join(paths.source_root, "marker")
    open(marker, "w").close()
    assert demo_data.ensure(root, **SMALL) == paths
    assert os.path.exists(marker)  # nothing was regenerated
    with open(os.path.join(root, "toy_stamp.json")) as f:
        stamp = json.load(f)
    assert stamp["options"]["num_source_ids"] == 4 and stamp["options"]["tracklets_per_id"] == [2, 3]
    # Other options (here a list instead of a tuple must not count as different, a new size must).
    assert demo_data.ensure(root, **{**SMALL, "tracklets_per_id": [2, 3]}) == paths and os.path.exists(marker)
    demo_data.ensure(root, **{**SMALL, "num_junk": 2})
    assert not os.path.exists(marker)


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    root = str(tmp_path / "demo")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layouts, "write_target", crash)
    with pytest.raises(KeyboardInterrupt):
        demo_data.ensure(root, **SMALL)
    assert os.path.isdir(os.path.join(root, "source")) and not os.path.exists(os.path.join(root, "toy_stamp.json"))
    monkeypatch.undo()
    demo_data.ensure(root, **SMALL)
    demo_data.generate(str(tmp_path / "fresh"), **SMALL)
    assert _tree_digest(root) == _tree_digest(tmp_path / "fresh")


def test_unknown_option_rejected(tmp_path):
    with pytest.raises(TypeError):
        demo_data.ensure(str(tmp_path), num_people=3)


def test_sizes_in_range(small):
    svreid = os.path.join(small.source_root, "SVReID")
    lines = {n: open(os.path.join(svreid, n)).read().split("\n")[:-1]
             for n in ("train_svreid.txt", "query.txt", "gallery.txt")}
    train_pids = [line.split()[1] for line in lines["train_svreid.txt"]]
    assert len(set(train_pids)) == 4
    for pid in set(train_pids):
        assert 2 <= train_pids.count(pid) <= 3
    assert len(lines["query.txt"]) == 2  # one query per source test identity
    for line in lines["train_svreid.txt"] + lines["gallery.txt"]:
        frames = os.listdir(os.path.join(svreid, line.split()[0]))
        assert 8 <= len(frames) <= 12
        assert int(line.split()[0].split("/")[-1]) < 3  # camera folder
    names = open(os.path.join(small.target_root, "info", "test_name.txt")).read().split()
    assert all(len(n) == len("0001C1T0001F001.jpg") for n in names)
    assert sum(n.startswith("00-1") for n in names) >= 8 and sum(n.startswith("0000") for n in names) >= 16
    with Image.open(os.path.join(small.target_root, "bbox_test", names[0][:4], names[0])) as im:
        assert im.size == (16, 32) and im.mode == "RGB"


def test_frames_change_over_time(small):
    folder = os.path.join(small.source_root, "SVReID", open(os.path.join(
        small.source_root, "SVReID", "train_svreid.txt")).readline().split()[0])
    frames = [np.asarray(Image.open(os.path.join(folder, f"{i}.jpg")), np.float32) for i in range(1, 9)]
    diffs = [np.abs(frames[i + 1] - frames[i]).mean() for i in range(7)]
    assert min(diffs) > 0.5  # the walker moves between every pair of consecutive frames


def test_domains_differ(small):
    """Source backgrounds are flat; target frames carry texture and noise."""
    def roughness(path):
        a = np.asarray(Image.open(path), np.float32)
        return np.abs(np.diff(a[:, :3], axis=0)).mean()  # left edge columns: background
    svreid = os.path.join(small.source_root, "SVReID")
    src_dir = os.path.join(svreid, open(os.path.join(svreid, "train_svreid.txt")).readline().split()[0])
    tgt_dir = os.path.join(small.target_root, "bbox_train")
    tgt_dir = os.path.join(tgt_dir, sorted(os.listdir(tgt_dir))[0])
    src = np.mean([roughness(os.path.join(src_dir, n)) for n in os.listdir(src_dir)])
    tgt = np.mean([roughness(os.path.join(tgt_dir, n)) for n in os.listdir(tgt_dir)])
    assert tgt > 3 * src


def test_bad_options_rejected(tmp_path):
    with pytest.raises(ValueError, match="frames_per_tracklet"):
        demo_data.generate(str(tmp_path), **{**SMALL, "frames_per_tracklet": (12, 8)})
    with pytest.raises(ValueError, match="num_cameras"):
        demo_data.generate(str(tmp_path), **{**SMALL, "num_cameras": 10})


# ---------------------------------------------------------------------------------------------
# The hard shift (configs/demo.py:hard)


def test_hard_shift_is_deterministic_and_differs_from_the_default(tmp_path):
    demo_data.generate(str(tmp_path / "a"), shift="hard", **SMALL)
    demo_data.generate(str(tmp_path / "b"), shift="hard", **SMALL)
    demo_data.generate(str(tmp_path / "plain"), **SMALL)
    hard, again, plain = (_tree_digest(tmp_path / n) for n in ("a", "b", "plain"))
    assert len(hard) > 100 and hard == again
    jpgs = [k for k in set(hard) & set(plain) if k.endswith(".jpg")]
    # Same people and layout, so the same file names; every frame of both domains looks different.
    assert set(hard) == set(plain) and jpgs and all(hard[k] != plain[k] for k in jpgs)


def test_stamp_leaves_out_the_default_shift(tmp_path):
    """A default demo's stamp has no shift entry, so stamps without one keep matching the default options."""
    root = str(tmp_path / "demo")
    demo_data.ensure(root, **SMALL)
    with open(os.path.join(root, "toy_stamp.json")) as f:
        assert "shift" not in json.load(f)["options"]
    marker = os.path.join(root, "source", "marker")
    open(marker, "w").close()
    demo_data.ensure(root, shift="none", **SMALL)
    assert os.path.exists(marker)
    demo_data.ensure(root, shift="hard", **SMALL)
    assert not os.path.exists(marker)
    with open(os.path.join(root, "toy_stamp.json")) as f:
        assert json.load(f)["options"]["shift"] == "hard"
    with pytest.raises(ValueError, match="shift"):
        demo_data.generate(str(tmp_path / "x"), shift="harder", **SMALL)


def test_hard_preset_loads_with_the_readers_at_micro_size(tmp_path):
    from configs import demo as demo_config
    from svreid_jax import builders
    from svreid_jax.data import datasets

    config = demo_config.get_config("source_only,micro,hard")
    assert config.data.demo_options.shift == "hard" and config.data.demo_options.num_source_ids == 8
    source_root, target_root = builders.demo_roots(config, str(tmp_path))
    assert source_root == str(tmp_path / "data_hard" / "source")  # not the default demo's folder
    source, target = datasets.load("svreid", source_root), datasets.load("mars", target_root)
    assert len({t.pid for t in source.train}) == 8 and len(target.query) > 0 and len(target.gallery) > 0
    with Image.open(target.query[0].frames[0]) as im:
        assert im.size == (16, 32)


def test_hard_target_is_blurrier_and_the_source_more_saturated(tmp_path):
    """Two properties the preset is built on, measured on the files: a low-resolution, motion-blurred
    target and a saturated source."""
    plain = demo_data.generate(str(tmp_path / "plain"), **SMALL)
    hard = demo_data.generate(str(tmp_path / "hard"), shift="hard", **SMALL)

    def frames(root):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".jpg"))[:200]
        return np.stack([np.asarray(Image.open(f), np.float32) for f in files])

    def saturation(a):
        return float((a.max(-1) - a.min(-1)).mean())

    def sharpness(a):
        return float(np.abs(np.diff(a, axis=2)).mean())

    assert saturation(frames(hard.source_root)) > 1.2 * saturation(frames(plain.source_root))
    assert sharpness(frames(hard.target_root)) < 0.7 * sharpness(frames(plain.target_root))


# ---------------------------------------------------------------------------------------------
# Pinned output: any edit that moves a random draw or changes an effect or a file format shows here


PIN_MICRO = dict(num_source_ids=8, num_source_test_ids=2, num_target_train_ids=6, num_target_test_ids=6,
                 num_cameras=3, tracklets_per_id=(2, 3), frames_per_tracklet=(4, 8), num_distractors=1, num_junk=1,
                 height=32, width=16)  # configs/demo.py:micro's sizes, copied so that config edits leave the pins
PIN_HARD = dict(shift="hard", texture_strength=0.25, clutter_blobs=2, colour_cast=0.08, desaturation=(0.0, 0.1),
                viewpoint_strength=0.3)  # configs/demo.py's HARD_DEMO_OPTIONS, copied likewise
# name → (options, digest of the images handed to the JPEG encoder and of the other files, digest of all
# files). The first depends on numpy's random streams and scipy's .mat writer only; the second also on
# the JPEG encoder, so it is compared only under the libjpeg-turbo it was computed with.
PINS = {
    "micro": (PIN_MICRO,
              "e1086a786140185c53e7b13e10a5840ff661736e7617dfe63a33110e716acb3a",
              "67f6ab8616b5b1b48daa31f08d75f136e13fce5eb80dcc8353a2e54119acdc8f"),
    "micro_hard_outfits": ({**PIN_MICRO, **PIN_HARD, "num_outfits": 2},
                           "94d463c16ed4f96f55a2138afc08dce475825d11932bd9ea5f61ab0e4515e29c",
                           "57c4741d370fd4f9749f1d781f841e5211b47f8c36ab51c01d459b8a90aeb051"),
}
PINNED_LIBJPEG_TURBO = "3.2.0"


def _combined_digest(digests: dict[str, str]) -> str:
    listing = "".join(f"{path} {digest}\n" for path, digest in sorted(digests.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def _pinned_digests(root, options) -> tuple[str, str]:
    """(images digest, files digest) of `generate(root, **options)`, as PINS records them."""
    encoded = {}
    save = Image.Image.save

    def recording_save(image, fp, *args, **kwargs):
        settings = repr((image.mode, image.size, sorted(kwargs.items()))).encode()
        encoded[os.path.relpath(fp, root)] = hashlib.sha256(image.tobytes() + settings).hexdigest()
        return save(image, fp, *args, **kwargs)

    Image.Image.save = recording_save
    try:
        demo_data.generate(str(root), **options)
    finally:
        Image.Image.save = save
    files = _tree_digest(root)
    assert set(encoded) == {path for path in files if path.endswith(".jpg")}
    images = {**encoded, **{path: digest for path, digest in files.items() if not path.endswith(".jpg")}}
    return _combined_digest(images), _combined_digest(files)


@pytest.mark.parametrize("name", sorted(PINS))
def test_generated_bytes_are_pinned(name, tmp_path):
    """The demo data of two micro-size configurations, byte for byte.

    A failure after an edit meant to keep the data means a random draw moved (each stream's draws
    must keep their order) or an effect changed; an intended change updates the pins here and
    _FORMAT_VERSION, so that stamps of the old data force a regeneration.
    """
    options, images_pin, files_pin = PINS[name]
    images, files = _pinned_digests(tmp_path / "demo", options)
    assert images == images_pin
    if features.version("libjpeg_turbo") == PINNED_LIBJPEG_TURBO:
        assert files == files_pin
