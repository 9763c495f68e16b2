"""Writers, progress and checkpoint round trips."""
import json
import os
import subprocess
import sys
import typing

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state as flax_train_state

from svreid_jax import state as state_lib
from svreid_jax.utils import progress, writers
from svreid_jax.utils.checkpointing import Checkpointer


def test_writer_jsonl_and_tensorboard(tmp_path):
    w = writers.MetricWriter(str(tmp_path))
    w.write_scalars(3, {"loss": jnp.float32(1.5), "acc": 0.25}, prefix="train/")
    w.write_scalars(4, {"loss": 1.0}, prefix="train/")
    w.write_images(4, {"grid": np.zeros((4, 6, 3), np.uint8)})
    w.close()
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [(l["step"], l["train/loss"]) for l in lines] == [(3, 1.5), (4, 1.0)]
    assert lines[0]["train/acc"] == 0.25
    events = os.listdir(tmp_path / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)


def test_writer_that_logged_nothing_leaves_nothing_to_close_at_exit(tmp_path):
    # A run that fails on its data (before any step is logged) exits without closing its writer. The TensorBoard
    # writer must not have been opened then: tensorboardX closes it from an exit hook, which on Python 3.12 adds
    # a traceback after the real error (its worker thread cannot start during interpreter shutdown).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"from svreid_jax.utils import writers; w = writers.MetricWriter({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "metrics.jsonl").exists()
    events = os.listdir(tmp_path / "tensorboard") if (tmp_path / "tensorboard").exists() else []
    assert not any(e.startswith("events.out.tfevents") for e in events)


def test_disabled_writer_writes_nothing(tmp_path):
    w = writers.MetricWriter(str(tmp_path / "x"), enabled=False, log_to_console=False)
    w.write_scalars(1, {"a": 1})
    w.close()
    assert not (tmp_path / "x").exists()


def test_format_duration():
    assert progress.format_duration(59.6) == "1:00"
    assert progress.format_duration(3725) == "1:02:05"


def test_progress_rate_and_eta(monkeypatch):
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    p = progress.Progress(total_steps=100, start_step=0)
    r = p.report(20)  # 20 steps in 10 s → 2 steps/s, 80 left → 40 s
    assert r["steps_per_sec"] == pytest.approx(2.0) and r["eta_sec"] == pytest.approx(40.0)
    assert "step 40/100 (40%)" in p.line(40)


def _grain_iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_checkpoint_round_trip_with_iterator_state(tmp_path):
    state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(7),
             "rng": jax.random.PRNGKey(3)}
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    it = _grain_iterator()
    for _ in range(42):
        next(it)
    ckpt.save(7, state, {"source_iter": it}, {"step": 7, "epoch": 1})
    ckpt.close()
    fresh = jax.tree.map(jnp.zeros_like, state)
    it = _grain_iterator()
    restored, meta = Checkpointer(str(tmp_path / "ckpt")).restore(fresh, {"source_iter": it})
    assert meta == {"step": 7, "epoch": 1} and next(it) == 42
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_without_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint under .*empty"):
        Checkpointer(str(tmp_path / "empty")).restore({"a": jnp.zeros(1)}, {})


class _StateBeforeRename(flax_train_state.TrainState):
    """TrainState's pytree as checkpoints stored it while the variant's state was the field `reference`."""

    batch_stats: typing.Any = None
    ema_params: typing.Any = None
    ema_batch_stats: typing.Any = None
    rng: typing.Any = None
    reference: typing.Any = None
    guard: typing.Any = None


def test_checkpoint_written_under_the_old_field_name_restores_into_variant_state(tmp_path):
    params = {"w": jnp.arange(3.0)}
    fields = dict(apply_fn=None, params=params, tx=optax.adam(1e-3), batch_stats={"m": jnp.ones(2)},
                  ema_params={"w": jnp.full(3, 2.0)}, ema_batch_stats={"m": jnp.zeros(2)},
                  rng=jax.random.PRNGKey(3), guard={"count": jnp.asarray(4, jnp.int32)})
    memory = {"labels": jnp.asarray([1, -1, 0], jnp.int32), "memory": jnp.arange(6.0).reshape(3, 2)}
    old = _StateBeforeRename.create(**fields, reference=memory).replace(step=7)
    old_dir = str(tmp_path / "old")
    ckpt = Checkpointer(old_dir)
    ckpt.save(7, old, {}, {"step": 7})
    ckpt.close()

    fresh = state_lib.TrainState.create(**fields, variant_state=jax.tree.map(jnp.zeros_like, memory))
    restored = Checkpointer(old_dir).restore_state_only(fresh)
    assert isinstance(restored, state_lib.TrainState) and int(restored.step) == 7
    for key, value in memory.items():
        np.testing.assert_array_equal(np.asarray(restored.variant_state[key]), np.asarray(value))
    np.testing.assert_array_equal(np.asarray(restored.ema_params["w"]), np.full(3, 2.0))
    assert int(restored.guard["count"]) == 4
    # Adam's moments came back too: the optimiser state has the saved structure and values.
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(fresh.opt_state)

    # A checkpoint of today's layout restores through the ordinary path.
    new_dir = str(tmp_path / "new")
    ckpt = Checkpointer(new_dir)
    ckpt.save(7, restored, {}, {"step": 7})
    ckpt.close()
    again = Checkpointer(new_dir).restore_state_only(fresh)
    np.testing.assert_array_equal(np.asarray(again.variant_state["memory"]), np.asarray(memory["memory"]))
