"""Extending the package from outside it: a loss term, a backbone, an evaluation protocol and a variant,
each registered from this file alone (no edit to svreid_jax/ or configs/), then the micro demo trained
and evaluated with them through `train.train_and_evaluate`."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from svreid_jax import builders, parallel, train, variants
from svreid_jax.data import datasets
from svreid_jax.evaluation import evaluators, protocols
from svreid_jax.models import backbones
from svreid_jax.state import TrainState
from svreid_jax.variants import common, terms

# ---------------------------------------------------------------------------------------------
# A backbone: one strided convolution per frame; its sub-config is `config.model.toy_conv`.


class ToyConv(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, frames, *, train: bool):
        del train
        return nn.relu(nn.Conv(self.features, (3, 3), strides=self.stride, name="conv")(frames))


TOY_BACKBONE = backbones.Backbone(
    build=lambda options, *, clip_len, dtype, bn_axis_name, name: ToyConv(name=name, **options),
    options=lambda model_config: dict(model_config.toy_conv),
    check=lambda options: dict(options),
    feature_dim=lambda options: options["features"],
)

# ---------------------------------------------------------------------------------------------
# A loss term: the mean squared BN-neck embedding of the source clips, weighed by config.loss.toy_norm.


def _embedding_energy(ctx: terms.TermContext):
    return {"toy_norm": jnp.mean(jnp.square(ctx.source["bn_embedding"]))}, {"toy_norm_seen": jnp.ones(())}


TOY_TERM = terms.LossTerm("toy_norm", {"toy_norm": "toy_norm"}, frozenset({terms.SOURCE}), _embedding_energy)

# ---------------------------------------------------------------------------------------------
# A protocol: the standard ranking first, then the same queries ranked by Euclidean distance.


def _cosine_then_euclidean(inputs: evaluators.ProtocolInputs):
    euclidean = protocols.DistanceSpec(metric="euclidean")
    return {"general": protocols.rank(protocols.distances(inputs.query_features, inputs.gallery_features,
                                                          inputs.distance), inputs.query, inputs.gallery),
            "euclidean": protocols.rank(protocols.distances(inputs.query_features, inputs.gallery_features, euclidean),
                                        inputs.query, inputs.gallery)}


# ---------------------------------------------------------------------------------------------
# A variant: source cross-entropy only, plain SGD-like update through the state's optimiser.


def _make_ce_only_step(model, config, axis_name=None):
    model = parallel.parallel_model(model, config, axis_name)

    def step(state: TrainState, batch):
        rng, k_aug, k_drop = jax.random.split(state.rng, 3)
        clips = common.prepare_clips(batch["source"]["video"], parallel.device_key(k_aug, axis_name), config)

        def loss_fn(params):
            out, stats = common.student_forward(model, params, state.batch_stats, clips, 0.0, k_drop)
            ctx = terms.TermContext(config, source=out, labels=batch["source"]["pid"])
            values, aux = terms.compute(terms.active(config, only=(terms.SOURCE,))[:1], ctx)
            return values["ce"], (aux, stats)

        (loss, (aux, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = parallel.cross_replica_mean(grads, axis_name)
        loss = parallel.cross_replica_mean(loss, axis_name)
        new_state = state.apply_gradients(grads=grads, batch_stats=stats).replace(rng=rng)
        return common.guard_and_report(state, new_state, rng, loss, common.global_norm(grads),
                                       {"loss": loss, "ce_only": loss, **aux})

    return step


TOY_VARIANT = variants.Variant(_make_ce_only_step, uses_target=lambda config: False, description="CE only")


@pytest.fixture
def registered():
    backbones.register("toy_conv", TOY_BACKBONE)
    terms.register(TOY_TERM)
    evaluators.register("cosine_then_euclidean", _cosine_then_euclidean)
    variants.register("ce_only", TOY_VARIANT)
    yield
    backbones.unregister("toy_conv")
    terms.unregister("toy_norm")
    evaluators.unregister("cosine_then_euclidean")
    variants.unregister("ce_only")


def _micro_config(tmp_path):
    config = demo.get_config("paper,micro")
    config.data.demo_root = str(tmp_path / "data")
    config.model.arch = "toy_conv"
    config.model.toy_conv = {"features": 16, "stride": 4}
    config.loss.toy_norm = 0.01
    config.data.target.protocol = "cosine_then_euclidean"
    return config


def _train_rows(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl") if "train/loss" in line]


@pytest.mark.slow  # about 20 s: a micro run; the default stage keeps its 15-minute budget
def test_toy_backbone_term_and_protocol_train_and_evaluate(tmp_path, registered):
    config = _micro_config(tmp_path)
    workdir = tmp_path / "run"
    final = train.train_and_evaluate(config, str(workdir))

    # The backbone is the toy one: its single conv is the whole 'backbone' subtree, D = 16.
    model = builders.create_model(config, num_classes=5)
    params, _ = builders.init_variables(config, model, jax.random.PRNGKey(0))
    assert set(params["backbone"]) == {"conv"} and params["bnneck"]["scale"].shape == (16,)
    # The term is computed, logged and weighed in: its metric and the extra metric it returns.
    rows = _train_rows(workdir)
    assert all(np.isfinite(r["train/toy_norm"]) and r["train/toy_norm"] > 0 for r in rows)
    assert all(r["train/toy_norm_seen"] == 1.0 for r in rows)
    # The protocol decides the results: its primary row unprefixed, its second row as 'euclidean/...'.
    results = json.load(open(workdir / "results.json"))
    assert results == pytest.approx(final)
    assert {"rank1", "mAP", "euclidean/rank1", "euclidean/mAP"} <= set(results)
    assert not any(key.startswith(("include_query/", "all/")) for key in results)  # not the MARS protocol
    # A zero weight takes the term out of the objective and the logs.
    config.loss.toy_norm = 0.0
    assert "toy_norm" not in [t.name for t in terms.active(config)]


@pytest.mark.slow  # about 10 s: a micro run; the default stage keeps its 15-minute budget
def test_toy_variant_trains_and_evaluates(tmp_path, registered):
    config = _micro_config(tmp_path)
    config.variant = "ce_only"
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    rows = _train_rows(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["train/ce_only"] == pytest.approx(r["train/loss"]) for r in rows)
    assert not any("train/frame_domain" in r for r in rows)  # the paper step did not run
    results = json.load(open(workdir / "results.json"))
    assert 0.0 <= results["rank1"] <= 1.0 and "euclidean/rank1" in results


def test_registries_refuse_duplicates_and_unknown_names(registered):
    with pytest.raises(ValueError, match="already registered"):
        backbones.register("toy_conv", TOY_BACKBONE)
    with pytest.raises(ValueError, match="already registered"):
        terms.register(TOY_TERM)
    with pytest.raises(ValueError, match="already registered"):
        evaluators.register("mars", _cosine_then_euclidean)
    with pytest.raises(ValueError, match="already registered"):
        variants.register("paper", TOY_VARIANT)
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.get("no_such_net")
    with pytest.raises(ValueError, match="data.target.protocol='nope'"):
        evaluators.get("nope")
    with pytest.raises(ValueError, match="config.variant='nope'"):
        variants.get("nope")
    with pytest.raises(ValueError, match="dataset 'mars' is already registered"):
        datasets.register("mars", lambda root: None)
    with pytest.raises(ValueError, match="unknown loss term 'nope'; expected one of"):
        terms.TERMS.get("nope")


def test_a_registered_term_comes_after_the_methods_terms(registered):
    config = demo.get_config("paper,cam,micro")
    config.loss.toy_norm = 0.01
    assert [t.name for t in terms.active(config)] == [
        "ce", "triplet", "frame_domain", "clip_domain", "teacher_consistency", "camera_alignment", "toy_norm"]


def test_a_term_whose_weight_field_is_missing_is_named(registered):
    config = demo.get_config("paper,micro")  # has no loss.toy_norm
    with pytest.raises(ValueError, match="config.loss.toy_norm"):
        terms.active(config)
