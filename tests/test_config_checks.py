"""config_checks: enumerated fields validated up front, unknown fields named with the closest ones, and
which config changes a resumed run refuses."""
import jax
import jax.numpy as jnp
import pytest

import os

from configs import default, demo
from svreid_jax import config_checks, losses
from svreid_jax.config_checks import ConfigError
from svreid_jax.models import reid


def test_every_enumerated_field_accepts_its_default_and_names_a_bad_value():
    config = demo.get_config("paper,micro")
    assert config_checks.problems(config) == []
    for field, names in config_checks.CHOICES.items():
        bad = demo.get_config("paper,micro")
        section, _, leaf = field.rpartition(".")
        (config_checks._get(bad, section) if section else bad)[leaf] = "bogus"
        expected = f"config.{field}='bogus': expected one of {', '.join(map(str, names()))}"
        assert expected in config_checks.problems(bad), field


def test_all_problems_in_one_line():
    config = default.get_config()
    config.data.decoder = "turbo"
    config.parallel.mode = "pjit"
    with pytest.raises(ConfigError) as err:
        config_checks.validate(config)
    assert str(err.value) == ("config.data.decoder='turbo': expected one of auto, pil, simplejpeg; "
                              "config.parallel.mode='pjit': expected one of jit, pmap")


def test_reader_options_and_backbone_options_are_checked():
    config = default.get_config()
    config.data.target.options = {"galery": "all"}
    config.model.arch, config.model.depth = "sinet", "tiny"
    found = config_checks.problems(config)
    assert found[0] == ("config.data.target.options: dataset 'mars' has no option(s) galery; its options: gallery, "
                        "check_frames")
    assert found[1].startswith("config.model (model.arch='sinet'): arch 'sinet' inserts a module after layer")


def test_literal_choices_are_the_ones_the_code_takes():
    # losses.py and models/reid.py spell their choices in code; these lists must stay in step with them.
    x = jnp.ones((2, 3))
    for metric in config_checks.CHOICES["loss.triplet_metric"]():
        losses.pairwise_distances(x, metric)
    with pytest.raises(ValueError):
        losses.pairwise_distances(x, "bogus")
    clips = jax.ShapeDtypeStruct((1, 2, 32, 16, 3), jnp.float32)
    for pooling in (*config_checks.CHOICES["model.frame_pooling"](), "bogus"):
        model = reid.ReIDNet(num_classes=2, backbone={"depth": "tiny", "width": 8}, frame_pooling=pooling)
        init = lambda: jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v, train=False), clips)  # noqa: E731
        if pooling == "bogus":
            with pytest.raises(ValueError, match="frame_pooling must be 'max' or 'avg'"):
                init()
        else:
            init()


def test_unknown_field_names_the_closest():
    config = default.get_config()
    assert config_checks.closest_fields("model.widht", config)[0] == "model.width"
    message = config_checks.unknown_field_message("train.num_epoch", config)
    assert message.startswith("unknown config field 'train.num_epoch' (--config.train.num_epoch); the closest "
                              "fields are train.num_epochs, ")
    assert config_checks.has_field(config, "data.source.name") and not config_checks.has_field(config, "data.foo")


def test_resume_changes_that_matter_and_those_that_cannot():
    saved = config_checks.as_json(demo.get_config("paper,micro"))
    current = demo.get_config("paper,micro")
    assert config_checks.resume_changes(saved, current) == []
    # Cadence, evaluation, locations, thread counts, the stop rules and the run's length cannot change it.
    current.train.log_every_steps = 7
    current.train.num_epochs = 9
    current.eval.distance = "euclidean"
    current.data.num_threads = 1
    current.data.source.root = "/elsewhere"
    current.train.divergence_factor = 5.0
    assert config_checks.resume_changes(saved, current) == []
    current.model.width = 16
    current.optimizer.learning_rate = 2e-3
    current.optimizer.lr_milestones = (10,)
    current.train.divergence_window = 20  # the guard's memory has this size in the checkpoint
    assert config_checks.resume_changes(saved, current) == [
        ("model.width", 8, 16), ("optimizer.learning_rate", 1e-3, 2e-3), ("optimizer.lr_milestones", [30], [10]),
        ("train.divergence_window", 50, 20)]
    assert (config_checks.describe_changes([("model.width", 8, 16)]) == "model.width (8 → 16)")
    del saved["seed"]
    assert config_checks.resume_changes(saved, demo.get_config("paper,micro")) == [("seed", None, 0)]


def test_a_checkpoint_from_before_a_field_existed_resumes_at_its_old_behaviour():
    current = demo.get_config("paper,micro")
    saved = config_checks.as_json(current)
    for section, name in (("loss", "camera_alignment"), ("augment", "erasing_sampler"), ("plus", "eps")):
        del saved[section][name]
    del saved["plus"]["reliable_delta"]
    current.loss.camera_alignment = 0.0  # the demo recipe turns it on; 0 is what the code did before
    assert config_checks.resume_changes(saved, current) == []
    current.plus.eps = 0.1  # plus.* is read by nothing but plus
    assert config_checks.resume_changes(saved, current) == []
    del saved["plus"]["true_identities"]
    assert config_checks.resume_changes(saved, current) == []  # named in ADDED_FIELDS, at its old behaviour
    current.plus.true_identities = True  # but switched on it changes what a resumed plus run does
    assert config_checks.resume_changes(saved, current) == [("plus.true_identities", None, True)]
    current.plus.true_identities = False
    current.loss.camera_alignment = 1.0  # a new field switched on does change the run
    current.augment.erasing_sampler = "authors"
    assert config_checks.resume_changes(saved, current) == [("augment.erasing_sampler", None, "authors"),
                                                            ("loss.camera_alignment", None, 1.0)]


def test_every_field_added_since_configs_were_stored_says_its_old_behaviour():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "config_fields_51ad9d8.txt"), encoding="utf-8") as f:
        then = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    now = config_checks.flat_fields(default.get_config())
    import fnmatch

    added = {field for field in set(now) - then
             if not any(fnmatch.fnmatchcase(field, p) for p in config_checks.RESUME_SAFE)}
    grouped = {field for field in added if any(fnmatch.fnmatchcase(field, p) for p in config_checks.ADDED_GROUPS)}
    assert set(config_checks.ADDED_FIELDS) <= added
    assert added - grouped == set(config_checks.ADDED_FIELDS) - grouped, sorted(
        (added - grouped) ^ (set(config_checks.ADDED_FIELDS) - grouped))
    for field, old in config_checks.ADDED_FIELDS.items():
        assert now[field] == old, f"{field}: the default {now[field]!r} is not the old behaviour {old!r}"


def test_eval_sizes_are_whole_numbers_with_zero_for_auto():
    config = default.get_config()
    assert config_checks.problems(config) == [] and (config.eval.batch_size, config.eval.num_threads) == (0, 0)
    config.eval.batch_size, config.eval.num_threads = 64, 8
    assert config_checks.problems(config) == []
    config.eval.batch_size, config.eval.num_threads = -1, -4
    assert config_checks.problems(config) == [
        f"config.eval.{field}={value}: expected a whole number ≥ 0 (0 = chosen from the devices, docs/USAGE.md "
        "\"Evaluation sizing and feature checks\")" for field, value in (("batch_size", -1), ("num_threads", -4))]
