"""Where training starts from (`model.init_from`): a real depth without weights is refused before any data is
read, 'none' starts from random weights on purpose, and evaluation modes ignore the keywords."""
import pytest

from configs import demo, mars
from svreid_jax import builders, train
from svreid_jax.data.records import DatasetError

REFUSAL = ("model.init_from is empty, so the ResNet-50 backbone would start from random weights; set "
           "--config.model.init_from=imagenet (torchvision's ImageNet weights, downloaded once from the Hugging "
           "Face hub), --config.model.init_from=<a torchvision ResNet-50 .safetensors/.npz/.pth file>, or "
           "--config.model.init_from=none to train from random weights on purpose")


def test_depth_50_without_weights_refuses_before_reading_data(tmp_path):
    config = mars.get_config()
    config.model.init_from = ""
    # The roots are empty: reading data would raise DatasetError, so a ValueError proves the refusal came first.
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert str(err.value) == REFUSAL
    assert "\n" not in str(err.value)


def test_init_from_none_starts_and_reaches_the_data(tmp_path):
    config = mars.get_config()
    config.model.init_from = "none"
    assert builders.initial_weights(config) is None
    with pytest.raises(DatasetError):  # past the weights, at the (missing) data
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_other_depths_and_the_tiny_demo():
    config = mars.get_config()
    config.model.init_from = ""
    config.model.depth = "101"  # no pinned hub file: the refusal offers a local file or none only
    with pytest.raises(ValueError) as err:
        builders.initial_weights(config)
    assert str(err.value).startswith("model.init_from is empty, so the ResNet-101 backbone would start from random "
                                     "weights; set --config.model.init_from=<a torchvision ResNet-101")
    config.model.init_from = "imagenet"
    with pytest.raises(ValueError, match=r"no pinned ImageNet weights for model.depth='101'"):
        builders.initial_weights(config)
    config.model.init_from = " /weights/r101.safetensors "
    assert builders.initial_weights(config) == "/weights/r101.safetensors"
    tiny = demo.get_config("paper,micro")
    assert tiny.model.init_from == "" and builders.initial_weights(tiny) is None  # the demo keeps its random start
    tiny.model.init_from = "imagenet"
    with pytest.raises(ValueError, match=r"no pinned ImageNet weights for model.depth='tiny'"):
        builders.initial_weights(tiny)


@pytest.mark.parametrize("keyword", ["imagenet", "none", ""])
def test_evaluation_ignores_the_training_keywords(tmp_path, keyword):
    # --mode=eval of a real config restores the workdir's checkpoint; 'imagenet' is not an authors' file to read.
    config = mars.get_config()
    config.model.init_from = keyword
    with pytest.raises(FileNotFoundError, match=r"^no checkpoint under .*checkpoints; train first"):
        builders.restore_variables(config, str(tmp_path))
