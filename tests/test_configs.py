"""Every config builds; every field of configs/default.py carries its one-line comment."""
import importlib
import os
import re

import pytest

from configs import default, demo
from svreid_jax import variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("target", ["mars", "ilidsvid", "prid", "lsvid", "ccvid"])
def test_target_configs_build_with_paper_hyperparameters(target):
    c = importlib.import_module(f"configs.{target}").get_config()
    assert c.data.target.name == target
    assert (c.batch.num_identities, c.batch.num_instances, c.batch.target_size) == (8, 4, 32)
    assert (c.optimizer.learning_rate, c.optimizer.weight_decay) == (3e-4, 5e-4)
    assert tuple(c.optimizer.lr_milestones) == (40, 80, 120) and c.train.num_epochs == 150
    assert (c.data.height, c.data.width, c.data.seq_len) == (256, 128, 4)
    assert c.adaptation.grl_max_steps == 20000
    assert c.model.depth == "50" and c.model.init_from == "imagenet"  # never a silent random start
    assert importlib.import_module(f"configs.{target}").get_config("reference").model.init_from == "imagenet"


def test_ccvid_uses_clothes_source_and_inner_product():
    c = importlib.import_module("configs.ccvid").get_config()
    assert c.data.source.name == "svreid_cc" and c.eval.distance == "inner"


@pytest.mark.parametrize("variant", ["paper", "source_only", "oracle", "frame", "frame_clip", "paper,micro",
                                     "source_only,hard", "oracle,hard", "paper,hard"])
def test_demo_variants_build(variant):
    c = demo.get_config(variant)
    assert c.data.demo


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown demo variant 'fast'"):
        demo.get_config("fast")
    with pytest.raises(ValueError, match="unknown variant 'fast' for configs/mars.py"):
        importlib.import_module("configs.mars").get_config("fast")


def test_every_default_field_has_a_comment():
    source = open(os.path.join(ROOT, "configs", "default.py"), encoding="utf-8").read()
    assignments = re.findall(r"^\s+c\.([\w.]+) = (.*)$", source, flags=re.M)
    leaves = [(name, rhs) for name, rhs in assignments if "ConfigDict()" not in rhs]
    missing = [name for name, rhs in leaves if "#" not in rhs]
    assert not missing, f"fields without a comment in configs/default.py: {missing}"
    # And the comments cover every leaf of the built config.
    documented = {name for name, rhs in assignments if "#" in rhs}
    flat = set()

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(f"{prefix}{k}.", v)
            else:
                flat.add(f"{prefix}{k}")

    walk("", default.get_config().to_dict())
    assert flat <= documented, sorted(flat - documented)


def test_demo_large_test_only_changes_the_number_of_target_test_identities():
    for variant in ("plus", "plus,hard", "source_only,micro"):
        plain = demo.get_config(variant).to_dict()
        large = demo.get_config(f"{variant},large_test").to_dict()
        options = large["data"].pop("demo_options")
        assert options.pop("num_target_test_ids") == 200
        assert options == {k: v for k, v in plain["data"].pop("demo_options").items() if k != "num_target_test_ids"}
        assert plain == large


def test_demo_hard_preset_only_changes_the_data():
    for variant in ("paper", "source_only", "oracle"):
        plain, hard = demo.get_config(variant).to_dict(), demo.get_config(f"{variant},hard").to_dict()
        assert hard["data"].pop("demo_options")["shift"] == "hard"
        plain["data"].pop("demo_options")
        assert plain == hard


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("ablation", sorted(demo.PLUS_ABLATIONS))
def test_each_plus_ablation_changes_only_its_ingredient(ablation):
    plus = _flat(demo.get_config("plus").to_dict())
    ablated = _flat(demo.get_config(f"plus,{ablation},hard").to_dict())
    hard_plus = _flat(demo.get_config("plus,hard").to_dict())
    changed = {k for k in plus if ablated[k] != hard_plus[k]}
    assert changed == set(demo.PLUS_ABLATIONS[ablation]), changed
    for field, value in demo.PLUS_ABLATIONS[ablation].items():
        assert ablated[field] == value != plus[field]  # each modifier really changes plus
    from svreid_jax.variants import plus as plus_variant
    plus_variant.check_config(demo.get_config(f"plus,{ablation}"))  # and the result still runs


def test_a_plus_ablation_before_plus_is_refused():
    with pytest.raises(ValueError, match="'no_soft' changes an ingredient of plus; combine it after plus, e.g. 'plus,no_soft'"):
        demo.get_config("paper,no_soft")


def test_overrides_set_dotted_fields_in_order_and_call_derived_values():
    from configs import overrides
    c = default.get_config()
    overrides.apply(c, {"batch.target_size": 10, "data.target.options.cut_length": 48,
                        "reference.consistency_clusters": lambda c: c.batch.target_size // 2})
    assert (c.batch.target_size, c.data.target.options.cut_length, c.reference.consistency_clusters) == (10, 48, 5)


@pytest.mark.parametrize("module, arg", [("demo", "plus"), ("demo", "plus,hard"), ("demo", "plus,no_soft"),
                                         ("mars", "plus"), ("ccvid", "plus")])
def test_plus_start_epoch_follows_a_num_epochs_override(module, arg):
    c = importlib.import_module(f"configs.{module}").get_config(arg)
    assert c.plus.start_epoch == c.train.num_epochs // 2
    c.train.num_epochs = 10  # what --config.train.num_epochs=10 does
    assert c.plus.start_epoch == 5


def test_demo_names_belong_to_one_kind_of_table():
    kinds = [demo.VARIANTS, demo.SIZES, demo.DATA_PRESETS, demo.PLUS_ABLATIONS]
    names = [name for kind in kinds for name in kind]
    assert len(names) == len(set(names)), names


def test_demo_tables_name_existing_fields():
    base = default.get_config()
    tables = [*demo.VARIANTS.values(), *demo.ADDITIONS.values(), *demo.SIZES.values(), *demo.DATA_PRESETS.values(),
              *demo.PLUS_ABLATIONS.values()]
    for table in tables:
        for field in table:
            section, *rest = field.split(".")
            node = base[section]
            for name in rest:
                node = node[name]  # KeyError names a misspelt field


@pytest.mark.parametrize("arg, message", [
    ("plus,fast", "unknown demo variant 'fast'; expected paper, source_only, oracle, frame, frame_clip, reference, "
                  "plus, cam, tbn, pairs, micro, hard, large_test or after plus one of no_camera_normalise, "),
    ("micro,standalone", "demo variant 'standalone' changes an ingredient of plus; combine it after plus, "
                         "e.g. 'plus,standalone'"),
    ("reference,cam", "demo modifier 'cam' is read by the paper and plus steps, not by reference's; combine it "
                      "with paper, source_only, frame, frame_clip or plus"),
])
def test_demo_errors_are_one_line(arg, message):
    with pytest.raises(ValueError) as err:
        demo.get_config(arg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# Our additions to the paper, each with the value that switches it off (docs/METHOD.md §9, §4.11, §1.4).
OURS_OFF = {
    "adaptation.target_bn": False, "loss.camera_alignment": 0.0, "data.target_views": 1,
    "adaptation.camera_centred": False, "loss.cluster_contrast": 0.0, "loss.cluster_soft": 0.0,
    "loss.intra_camera": 0.0, "loss.inter_camera": 0.0, "eval.camera_normalise": False, "eval.rerank": False,
}
REAL_TARGETS = ("mars", "ilidsvid", "prid", "lsvid", "ccvid")


def _field(config, dotted):
    node = config
    for name in dotted.split("."):
        node = node[name]
    return node


@pytest.mark.parametrize("source", ["demo:paper", "demo:paper,hard", *(f"{t}:" for t in REAL_TARGETS)])
def test_paper_runs_the_paper_as_published_with_none_of_our_additions(source):
    module, _, arg = source.partition(":")
    config = importlib.import_module(f"configs.{module}").get_config(arg or None)
    assert config.variant == "paper"
    on = {field: _field(config, field) for field, off in OURS_OFF.items() if _field(config, field) != off}
    assert on == {}, f"configs/{module}.py:{arg or 'paper'} has our additions on: {on}"


def test_each_addition_is_its_own_modifier_and_plus_has_them_all():
    assert demo.get_config("source_only,tbn").adaptation.target_bn is True
    cam = demo.get_config("source_only,cam,tbn")
    assert (cam.loss.camera_alignment, cam.adaptation.target_bn, cam.loss.frame_domain, cam.loss.consistency_ce) == (
        1.0, True, 0.0, 0.0)
    full = demo.get_config("paper,cam,pairs,tbn")
    assert (full.data.target_views, full.adaptation.camera_centred) == (2, True)
    for source in ("demo:plus", "demo:plus,hard", *(f"{t}:plus" for t in REAL_TARGETS)):
        module, _, arg = source.partition(":")
        plus = importlib.import_module(f"configs.{module}").get_config(arg)
        assert (plus.loss.camera_alignment, plus.adaptation.target_bn, plus.data.target_views,
                plus.adaptation.camera_centred) == (1.0, True, 2, True), source


# The clustering settings every preset must leave to the label-free rules (configs/default.py): the
# teacher's per-batch k-means count, plus's k1, k2, eps (0 = from the rule), min_samples and k-means count.
RULE = {"adaptation.kmeans_clusters": 0, "plus.k1": 0, "plus.k2": 0, "plus.eps": 0.0, "plus.eps_quantile": 0.8,
        "plus.min_samples": 2, "plus.kmeans_clusters": 0}


def _every_preset():
    for name in (*demo.VARIANTS, *(f"plus,{m}" for m in demo.PLUS_ABLATIONS)):
        for data in ("", ",hard"):
            yield f"demo:{name}{data}"
    for target in REAL_TARGETS:
        for variant in ("paper", "reference", "plus"):
            yield f"{target}:{variant}"


@pytest.mark.parametrize("source", list(_every_preset()))
def test_every_preset_takes_its_clustering_settings_from_the_label_free_rule(source):
    module, _, arg = source.partition(":")
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    differs = {field: _field(config, field) for field, value in RULE.items() if _field(config, field) != value}
    assert differs == {}, f"configs/{module}.py:{arg} sets clustering settings by hand: {differs}"


@pytest.mark.parametrize("source", list(_every_preset()))
def test_no_preset_but_the_labelled_diagnostic_hands_target_labels_to_training(source):
    module, _, arg = source.partition(":")
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    assert variants.reads_target_labels(config) == ("true_identities" in arg), source
