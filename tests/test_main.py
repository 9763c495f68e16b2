"""End to end: the command line on a micro config, resume, and the missing-data error."""
import json
import os
import sys

import pytest

import child_processes
from configs import demo
from svreid_jax import builders, train
from svreid_jax.data.records import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_main(workdir, *extra):
    cmd = [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro", f"--workdir={workdir}",
           *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return child_processes.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # about 90 s: a whole micro run through main; the default stage keeps its 15-minute budget
def test_main_trains_evaluates_and_writes_everything(tmp_path):
    workdir = tmp_path / "run"
    done = _run_main(workdir, "--config.train.select_holdout_ids=2", "--config.train.eval_every_epochs=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "target rank-1" in done.stdout and "| R-1 | R-5 | R-10 | R-20 | mAP |" in done.stdout
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    train_steps = [l["step"] for l in lines if "train/loss" in l]
    assert train_steps == [1, 2, 3, 4]
    assert any("eval/rank1" in l for l in lines)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    assert "4" in os.listdir(workdir / "checkpoints")
    # 4 steps consumed 4 batches of each stream; the ones prefetched to device beyond them
    # (data.device_prefetch=2 by default) must not count, or a resume would skip them.
    for stream in ("source_iter", "target_iter"):
        saved = json.load(open(workdir / "checkpoints" / "4" / stream / "process_0-of-1.json"))
        assert saved == {"next_index": 4}, (stream, saved)
    results = json.load(open(workdir / "results.json"))
    assert 0.0 <= results["rank1"] <= 1.0 and 0.0 <= results["mAP"] <= 1.0
    assert "ETA" in done.stderr  # progress lines with throughput and ETA
    # A default run shows our lines only: no orbax INFO chatter, no backend probe (see --verbosity=1 below).
    assert "checkpoint_manager.py" not in done.stderr and "libtpu" not in done.stderr
    assert "parameters (table in" in done.stderr and os.path.getsize(workdir / "parameters.txt") > 0
    # Model selection ran on held-out *source* identities, never on target labels.
    assert any("select/rank1" in l for l in lines)
    assert "evaluating the selected checkpoint" in done.stderr

    # Running again with a longer schedule resumes from step 4 instead of starting over.
    again = _run_main(workdir, "--config.train.num_epochs=3", "--config.train.select_holdout_ids=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "from step 4" in again.stderr
    steps_after = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl") if "train/loss" in l]
    assert steps_after[-2:] == [5, 6]

    # --mode=eval evaluates the latest checkpoint.
    evaluated = _run_main(workdir, "--mode=eval", "--config.train.num_epochs=3", "--config.train.select_holdout_ids=2",
                          "--verbosity=1")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "| R-1 |" in evaluated.stdout
    assert "checkpoint_manager.py" in evaluated.stderr  # --verbosity=1 lets the libraries' INFO lines through


def test_missing_data_root_is_one_clear_error(tmp_path):
    config = demo.get_config("paper,micro")
    config.data.demo = False
    config.data.source.root = str(tmp_path / "no_such_svreid")
    with pytest.raises(DatasetError, match="no_such_svreid"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_hold_out_source_splits_identities():
    from svreid_jax.data.records import DatasetSplits, Tracklet

    train_split = tuple(Tracklet((f"{p}_{k}.jpg",), p, k) for p in range(6) for k in range(3))
    kept, held = builders.hold_out_source(DatasetSplits(train_split, (), ()), 2, seed=0)
    held_pids = {t.pid for t in held.query}
    assert len(held_pids) == 2 and {t.pid for t in held.gallery} == held_pids
    assert len(held.query) == 2 and len(held.gallery) == 4
    assert sorted({t.pid for t in kept.train}) == [0, 1, 2, 3]  # relabelled
    assert len(kept.train) == 12
    with pytest.raises(ValueError, match="select_holdout_ids=5 leaves too few"):
        builders.hold_out_source(DatasetSplits(train_split, (), ()), 5, seed=0)


def test_packed_data_reads_the_same_tracklets_as_folders(tmp_path):
    from svreid_jax.data import pack, demo as demo_data

    config = demo.get_config("paper,micro")
    config.data.demo_root = str(tmp_path / "data")
    folder_source, folder_target = builders.load_datasets(config, str(tmp_path))
    paths = demo_data.ensure(str(tmp_path / "data"), **config.data.demo_options.to_dict())
    packed_dir = pack.pack("mars", paths.target_root, str(tmp_path / "packed"), progress=False)
    config.data.target.packed = packed_dir
    _, packed_target = builders.load_datasets(config, str(tmp_path))
    for split in ("train", "query", "gallery"):
        a, b = getattr(folder_target, split), getattr(packed_target, split)
        assert len(a) == len(b) > 0
        assert [t.pid for t in a] == [b[i].pid for i in range(len(b))]
        assert [len(t) for t in a] == [len(b[i]) for i in range(len(b))]
    # Evaluation modes read the target through the same builder: the packed shards, not the folder.
    eval_target = builders.load_target(config, str(tmp_path))
    assert [eval_target.query[i].pid for i in range(len(eval_target.query))] == [t.pid for t in folder_target.query]
    assert type(eval_target.query) is type(packed_target.query)
    with pytest.raises(ValueError, match="cannot change packed shards"):
        builders.load_target(config, str(tmp_path), split_id=1)


def test_cli_reports_a_missing_root_in_one_line(tmp_path):
    done = _run_main(tmp_path / "run", "--config.data.demo=False", f"--config.data.source.root={tmp_path}/nowhere")
    assert done.returncode == 1
    assert "svreid_jax: data error:" in done.stderr and "nowhere" in done.stderr
    assert "Traceback" not in done.stderr
