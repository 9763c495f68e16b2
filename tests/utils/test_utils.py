"""Writers, progress and checkpoint round trips."""
import json
import os
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
