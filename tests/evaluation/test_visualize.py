"""Visualisations: the PNGs of --mode=visualize on the micro demo data with a freshly initialised tiny model,
and the pieces (query choice, ranked lists, PCA, ticks, layout) on hand-made inputs."""
import jax
import numpy as np
import pytest
from PIL import Image

from configs import demo
from svreid_jax import builders
from svreid_jax.data.records import Tracklet
from svreid_jax.evaluation import visualize
from svreid_jax.models import reid


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = demo.get_config("paper,micro")
    config.data.demo_root = str(tmp_path_factory.mktemp("demo"))
    config.eval.visualize_queries = 3
    config.eval.visualize_points = 12
    source, target = builders.load_datasets(config, "/nonexistent")
    model = builders.create_model(config, source.num_train_pids)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0),
                                          (1, config.eval.seq_len, config.data.height, config.data.width, 3))
    return config, model, {"params": params, "batch_stats": batch_stats}, source, target


def test_write_visualizations_on_micro_demo(setup, tmp_path):
    config, model, variables, source, target = setup
    paths = visualize.write_visualizations(config, model, variables, source, target, str(tmp_path / "vis"), title="t")
    assert sorted(paths) == ["pca", "ranked"]
    for p in paths.values():
        assert p.endswith(".png") and (tmp_path / "vis").joinpath(p.split("/")[-1]).stat().st_size > 0
    with Image.open(paths["ranked"]) as im:
        im.load()  # decodes
        # 3 queries; frames 96 px high and 96 * 16 / 32 = 48 px wide (the micro data are 32 × 16)
        assert im.size == visualize.GridLayout(frame_height=96, frame_width=48).size(3)
        assert im.mode == "RGB"
        pixels = np.asarray(im)
    # green and red frames are there
    assert np.any(np.all(pixels == visualize.GREEN, axis=-1)) or np.any(np.all(pixels == visualize.RED, axis=-1))
    with Image.open(paths["pca"]) as im:
        im.load()
        assert im.size == (820, 600)
        pixels = np.asarray(im).reshape(-1, 3)
    # points of both domains were drawn (their outline colours are opaque)
    for colour in (visualize.SOURCE_COLOUR, visualize.TARGET_COLOUR):
        assert np.any(np.all(pixels == colour, axis=-1))


def test_grid_layout_size_by_hand():
    layout = visualize.GridLayout(frame_height=96, frame_width=48)
    cell_w = 3 * 48 + 2 + 2 * 4  # 154
    assert layout.cell_width == cell_w and layout.cell_height == 96 + 8 + 32
    assert layout.size(2) == (2 * 12 + 11 * cell_w + 22 + 9 * 6, 2 * 12 + 44 + 2 * 136 + 12)
    assert layout.cell_x(1) == 12 + cell_w + 22


def _tracklets(specs):
    return [Tracklet(frames=(f"/x/{i}.jpg",), pid=p, camid=c) for i, (p, c) in enumerate(specs)]


def test_choose_queries_and_ranked_lists():
    query = _tracklets([(1, 0), (2, 0), (3, 0), (1, 1)])
    gallery = _tracklets([(1, 0), (1, 2), (2, 0), (4, 1)])  # query 1 (pid 2) has only a same-camera copy
    chosen = visualize.choose_queries(query, gallery, 10)
    assert chosen.tolist() == [0, 3]
    assert visualize.choose_queries(query, gallery, 1).tolist() == [0]
    d = np.array([[0.0, 0.5, 0.2, 0.2], [0, 0, 0, 0], [0, 0, 0, 0], [0.9, 0.1, 0.3, 0.3]])
    lists = visualize.ranked_lists(d, query, gallery, chosen, top_k=10)
    # query 0: gallery 0 (same pid, same camera) is junk and left out; ties keep gallery order
    assert lists[0].gallery.tolist() == [2, 3, 1] and lists[0].correct.tolist() == [False, False, True]
    assert lists[0].distances.tolist() == pytest.approx([0.2, 0.2, 0.5])
    assert lists[1].gallery.tolist() == [1, 2, 3, 0] and lists[1].correct.tolist() == [True, False, False, True]


def test_pca_2d():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # centred, orthonormal columns
    base = q * np.array([30.0, 10.0, 0.01])  # variances in ratio 900 : 100 : 1e-4
    rotation = np.array([[1 / np.sqrt(2), 1 / np.sqrt(2), 0], [0, 0, 1], [1 / np.sqrt(2), -1 / np.sqrt(2), 0]])
    xy, explained = visualize.pca_2d(base @ rotation + 5.0)
    assert xy.shape == (500, 2)
    np.testing.assert_allclose(np.abs(xy), np.abs(base[:, :2]), atol=1e-9)  # up to each axis's sign
    np.testing.assert_allclose(explained, [900 / 1000.0001, 100 / 1000.0001])
    with pytest.raises(ValueError):
        visualize.pca_2d(np.zeros((1, 3)))


def test_nice_ticks():
    assert visualize.nice_ticks(-0.43, 0.81).tolist() == pytest.approx([-0.25, 0.0, 0.25, 0.5, 0.75])
    assert visualize.nice_ticks(0, 10, count=5).tolist() == pytest.approx([0, 2, 4, 6, 8, 10])
