"""The reference variant end to end: configs, a micro training run, and evaluating an authors' checkpoint."""
import importlib
import json
import os

import flax
import jax
import numpy as np
import pytest

from configs import demo
from svreid_jax import builders, train
from svreid_jax.evaluation import evaluate
from svreid_jax.models import reid

TARGETS = ["mars", "ilidsvid", "prid", "lsvid", "ccvid"]


@pytest.mark.parametrize("target", TARGETS)
def test_reference_configs_set_every_divergence_to_the_code(target):
    c = importlib.import_module(f"configs.{target}").get_config("reference")
    paper = importlib.import_module(f"configs.{target}").get_config()
    r = c.reference
    assert c.variant == "reference" and paper.variant == "paper"
    assert (r.detach_temporal_input, r.consistency_constant, r.teacher_reset_every_epoch, r.learnable_weights,
            r.accumulate_weight_grads, r.double_count_stage_loss, r.shared_grl_beta,
            r.reset_temporal_optimizer_every_epoch) == (True,) * 8
    assert not r.backbone_clip_discriminator
    assert (r.num_stages, r.num_layers, r.features, tuple(r.adv_stages)) == (4, 10, 64, (1, 2))
    assert (r.tmse_weight, r.tmse_tau, r.entropy_weight, r.consistency_clusters) == (0.15, 4.0, 0.01, 16)
    assert tuple(r.weight_init) == (0.0, -1.55, -0.45) and (r.weight_lr, r.weight_decay) == (3e-4, 5e-4)
    assert c.model.arch == "sinet" and c.model.stem_pool_padding == 0 and c.model.conv_bias
    assert c.data.target_sampling == "identity" and c.train.select_on_target_test
    assert (c.eval.temporal, c.eval.seq_len) == ("restricted_begin", 4)
    assert (c.parallel.mode, c.parallel.sync_bn) == ("pmap", False)
    assert (c.adaptation.ema_decay, c.adaptation.teacher_augment) == (0.99, False)
    assert c.adaptation.grl_max_steps == 20000 and c.loss.infonce == 0.001
    # D14–D16: InfoNCE normalised as their code, their BN-neck running statistics, their erasing draws.
    assert r.infonce_sum_groups and c.model.bnneck_torch_stats and c.augment.erasing_sampler == "authors"
    assert not (paper.reference.infonce_sum_groups or paper.model.bnneck_torch_stats)
    assert paper.augment.erasing_sampler == "log_aspect"
    if target == "lsvid":
        assert c.data.target.options.cut_length == 48
    # The paper variant keeps every D# flag on the paper's side.
    assert not any((paper.reference.detach_temporal_input, paper.reference.consistency_constant,
                    paper.reference.learnable_weights, paper.reference.double_count_stage_loss))


@pytest.mark.slow
def test_reference_micro_trains_and_evaluates(tmp_path):
    config = demo.get_config("reference,micro")
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert 0.0 <= metrics["rank1"] <= 1.0 and metrics["num_valid_queries"] > 0
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_rows = [r for r in rows if "train/stage" in r]
    assert len(train_rows) == 4  # 2 epochs × 2 steps, logged every step
    assert all(np.isfinite(r["train/loss"]) and r["train/skipped"] == 0 for r in train_rows)
    # The loss weights drift down every step (D4), and the teacher is a copy at each epoch start (D3).
    a = [r["train/a_reid"] for r in train_rows]
    assert all(later < earlier for earlier, later in zip(a, a[1:]))
    assert [r["train/teacher_decay"] for r in train_rows] == [0.0, 0.5, 0.0, 0.5]


def _torch_state_dict(variables):
    """Our plain-ResNet ReIDNet variables under the authors' names (as DataParallel saves them)."""
    sd = {}
    for coll in ("params", "batch_stats"):
        for path, v in flax.traverse_util.flatten_dict(jax.device_get(variables[coll])).items():
            if path[0].endswith("discriminator"):
                continue
            v = np.asarray(v)
            leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}[path[-1]]
            if path[0] == "backbone":
                mod = path[1] if len(path) == 3 else (path[1].replace("_", ".") + "." + path[2].replace("_", "."))
                if path[-1] == "kernel":
                    v = v.transpose(3, 2, 0, 1)[:, :, None]  # HWIO → Conv3d [O, I, 1, kh, kw]
            else:
                mod = {"bnneck": "bn"}.get(path[0], path[0])
                if path[-1] == "kernel":
                    v = v.T
            sd[f"module.{mod}.{leaf}"] = v
    return sd


@pytest.mark.torch
def test_eval_mode_converts_an_authors_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    config = demo.get_config("reference,micro")
    config.eval.protocols = False
    model = builders.create_model(config, 5)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(4), (1, 4, config.data.height,
                                                                          config.data.width, 3))
    variables = {"params": params, "batch_stats": batch_stats}
    path = tmp_path / "best_model.pth.tar"
    torch.save({"state_dict": {k: torch.tensor(np.array(v)) for k, v in _torch_state_dict(variables).items()},
                "rank1": 0.42, "epoch": 3}, path)
    config.model.init_from = str(path)
    got = evaluate.evaluate_checkpoint(config, str(tmp_path))
    want = evaluate.evaluate(config, model, variables, builders.load_target(config, str(tmp_path)), None)
    for key in ("rank1", "mAP"):
        assert got[key] == pytest.approx(want[key], abs=1e-6)
    report = json.load(open(tmp_path / "eval_results.json"))
    assert report["clips"] == {"temporal": "restricted_begin", "seq_len": 4, "flip_average": False}
    assert report["checkpoint"]["directory"] == os.path.abspath(path)
