"""Faults around what a run writes and how the command line answers, each injected and checked for: nothing
written before is lost or half-written, and an expected user error is one line on stderr with exit 1.

Outputs: a full disk while results, diagnostics or a converted weight file are written (the earlier files
stay whole; extract's all-or-nothing folder is tests/evaluation/test_embedder.py's
test_extract_writes_are_all_or_nothing); reruns keep earlier results (results-<n>.json); a second process
on a workdir (a real one, holding the lock); --mode=splits with a corrupt, stopped or other-settings split.
Errors: --mode=eval on an empty workdir, the hub offline or a file with the wrong size, an empty target
train split, a .safetensors model.init_from in eval/extract/visualize, visualize on packed data.

The command-line cases run `python -m svreid_jax.main` on the micro demo (tests/conftest.py's micro_run
is the one trained workdir; tests that write into a workdir copy it).
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.numpy
import scipy.io

from configs import demo, ilidsvid
from svreid_jax import builders, splits, train
from svreid_jax.data import datasets, pack
from svreid_jax.evaluation import diagnostics, protocols, visualize
from svreid_jax.interop import convert, hub
from svreid_jax.utils import atomic, lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/demo.py:paper,micro"


def _main(workdir, *extra, env=None, timeout=300):
    cmd = [sys.executable, "-m", "svreid_jax.main", CONFIG, f"--workdir={workdir}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def _one_line(done) -> str:
    """The error line of a command that must end in one line and exit 1 (no traceback)."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def run_copy(micro_run, tmp_path):
    """A private copy of the suite's micro workdir, for tests that write into it."""
    copy = tmp_path / "run"
    shutil.copytree(micro_run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


# --- results files --------------------------------------------------------------------------------------


def test_results_survive_a_full_disk(tmp_path, monkeypatch):
    protocols.write_results(str(tmp_path), "results", {"rank1": 0.5}, "| old |")
    before = {name: (tmp_path / name).read_bytes() for name in ("results.json", "results.md")}
    monkeypatch.setattr(atomic.os, "fsync", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        protocols.write_results(str(tmp_path), "results", {"rank1": 0.7}, "| new |")
    # The earlier pair is whole and parses; no temporary file and no half-kept copy is left.
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert json.loads(before["results.json"]) == {"rank1": 0.5}
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


def test_rewritten_results_keep_the_earlier_ones(tmp_path):
    d = str(tmp_path)
    protocols.write_results(d, "eval_results", {"rank1": 0.5, "extract_sec": 1.0}, "A")
    # The same results (only the timing differs): nothing is kept.
    protocols.write_results(d, "eval_results", {"rank1": 0.5, "extract_sec": 2.5}, "A")
    assert protocols.earlier_results(d, "eval_results") == []
    protocols.write_results(d, "eval_results", {"rank1": 0.6}, "B")
    protocols.write_results(d, "eval_results", {"rank1": 0.7}, "C")
    assert json.load(open(tmp_path / "eval_results.json")) == {"rank1": 0.7}
    assert protocols.earlier_results(d, "eval_results") == [str(tmp_path / "eval_results-1.json"),
                                                             str(tmp_path / "eval_results-2.json")]
    assert json.load(open(tmp_path / "eval_results-1.json")) == {"rank1": 0.5, "extract_sec": 2.5}
    assert (tmp_path / "eval_results-1.md").read_text() == "A\n"
    assert json.load(open(tmp_path / "eval_results-2.json")) == {"rank1": 0.6}
    assert (tmp_path / "eval_results-2.md").read_text() == "B\n"
    # A half-written file (what writing in place left after a full disk) is kept byte for byte, not lost.
    (tmp_path / "eval_results.json").write_bytes(b'{"rank1": 0.7, "ran')
    protocols.write_results(d, "eval_results", {"rank1": 0.8}, "D")
    assert (tmp_path / "eval_results-3.json").read_bytes() == b'{"rank1": 0.7, "ran'
    assert json.load(open(tmp_path / "eval_results.json")) == {"rank1": 0.8}


@pytest.mark.slow  # about 12 s: a rerun; the default stage keeps its 15-minute budget
def test_a_finished_run_rerun_with_other_eval_settings_keeps_its_results(run_copy):
    before = {name: (run_copy / name).read_bytes() for name in ("results.json", "results.md")}
    assert "include_query/rank1" in json.loads(before["results.json"])
    done = _main(run_copy, "--config.train.num_epochs=1", "--config.eval.protocols=False")
    assert done.returncode == 0, done.stderr[-3000:]
    # The resumed, finished run only evaluates again; its earlier results are kept, not overwritten.
    assert (run_copy / "results-1.json").read_bytes() == before["results.json"]
    assert (run_copy / "results-1.md").read_bytes() == before["results.md"]
    now = json.load(open(run_copy / "results.json"))
    assert "include_query/rank1" not in now and now["rank1"] == json.loads(before["results.json"])["rank1"]
    assert f"{run_copy / 'results.json'} held other results; the earlier ones are kept as " \
           f"{run_copy / 'results-1.json'}" in done.stderr


_FULL_DISK_MAIN = textwrap.dedent("""
    import errno, os, sys
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    os.fsync = full_disk  # every atomic write flushes before its rename: this one cannot
    from svreid_jax import main
    sys.argv = ["svreid-jax", *sys.argv[1:]]
    main.run()
""")


def test_a_full_disk_during_eval_is_one_line_and_keeps_the_earlier_results(run_copy):
    (run_copy / "eval_results.json").write_text('{"rank1": 0.25}\n')
    (run_copy / "eval_results.md").write_text("earlier\n")
    done = subprocess.run([sys.executable, "-c", _FULL_DISK_MAIN, CONFIG, f"--workdir={run_copy}", "--mode=eval"],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=300)
    assert _one_line(done) == (f"svreid_jax: write error: could not write {run_copy / 'eval_results.json'}: No space "
                               "left on device; the previous one, if any, is as it was")
    assert (run_copy / "eval_results.json").read_text() == '{"rank1": 0.25}\n'
    assert (run_copy / "eval_results.md").read_text() == "earlier\n"
    assert not [n for n in os.listdir(run_copy) if n.startswith(".eval_results") or n.startswith("eval_results-")]


def test_diagnostics_survive_a_failed_write(tmp_path, monkeypatch):
    report = {"checkpoint": {"directory": "x", "step": 1},
              "domain_probe": {"accuracy": 0.5}, "camera_probe": {"accuracy": float("nan"), "chance": 1.0},
              "teacher_clusters": {"nmi": 0.1, "purity": 0.2},
              "whole_set_clusters": {"nmi": 0.3, "purity": 0.4, "outliers": 0.0, "clusters": 2, "identities": 2},
              "camera_pairs": {"rank1": [[None, 0.5], [1.0, None]], "queries": [[0, 1], [1, 0]]}}
    out = tmp_path / "diagnostics"
    diagnostics.write_report(report, str(out))
    before = {name: (out / name).read_bytes() for name in ("diagnostics.json", "diagnostics.png")}
    assert json.loads(before["diagnostics.json"])["camera_probe"]["chance"] == 1.0

    monkeypatch.setattr(diagnostics.Image.Image, "save", _full_disk)  # the JSON is written, the picture fails
    with pytest.raises(OSError, match="No space left"):
        diagnostics.write_report({**report, "domain_probe": {"accuracy": 0.9}}, str(out))
    assert {name: (out / name).read_bytes() for name in before} == before
    assert os.listdir(tmp_path) == ["diagnostics"]


def test_convert_keeps_an_earlier_output_on_a_full_disk(tmp_path, monkeypatch, capsys):
    state = {"conv1.weight": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}
    safetensors.numpy.save_file(state, str(tmp_path / "in.safetensors"))
    for out in ("out.npz", "out.safetensors"):
        assert convert.main(["convert", f"--in={tmp_path / 'in.safetensors'}", f"--out={tmp_path / out}"]) == 0
    before = {out: (tmp_path / out).read_bytes() for out in ("out.npz", "out.safetensors")}
    safetensors.numpy.save_file({"conv1.weight": -state["conv1.weight"]}, str(tmp_path / "in.safetensors"))
    monkeypatch.setattr(atomic.os, "fsync", _full_disk)
    for out in before:
        assert convert.main(["convert", f"--in={tmp_path / 'in.safetensors'}", f"--out={tmp_path / out}"]) == 1
        assert capsys.readouterr().err == "error: [Errno 28] No space left on device\n"
        assert (tmp_path / out).read_bytes() == before[out]
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "out.npz", "out.safetensors"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["conv1.weight"], state["conv1.weight"])
    monkeypatch.undo()
    assert convert.main(["convert", f"--in={tmp_path / 'nope.pth'}", f"--out={tmp_path / 'x.npz'}"]) == 1
    assert capsys.readouterr().err == f"error: model.init_from: weight file not found: {tmp_path / 'nope.pth'}\n"


# --- one process per workdir -----------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from svreid_jax.utils import lock
    lock.hold(sys.argv[1])
    print("held", flush=True)
    time.sleep(120)
""")


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow  # about 12 s: a command-line run; the default stage keeps its 15-minute budget
def test_a_second_process_on_the_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')  # the first run's log, which must stay as it is
    holder = _holder(workdir)
    try:
        refusal = (f"svreid_jax: workdir error: {workdir} is in use by process {holder.pid} (lock {workdir}/.lock); "
                   "wait for it to end, or give this command another --workdir")
        for mode in ("train", "eval"):
            assert _one_line(_main(workdir, f"--mode={mode}")) == refusal
        assert (workdir / "metrics.jsonl").read_text() == '{"step": 1}\n'
        assert sorted(os.listdir(workdir)) == [".lock", "metrics.jsonl"]
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops the lock with the process, kill -9 included
        holder.wait(timeout=60)
    # Free again: --mode=eval gets past the lock (to its own error, the empty workdir) and holds it itself.
    proc = subprocess.Popen([sys.executable, "-m", "svreid_jax.main", CONFIG, f"--workdir={workdir}", "--mode=eval"],
                            cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"svreid_jax: checkpoint error: no checkpoint under {workdir}/checkpoints; "
                                            "train first (--mode=train) with this --workdir")
    assert (workdir / ".lock").read_text() == f"{proc.pid}\n"


def test_the_lock_is_per_process_and_released_after_a_block(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert lock.hold(str(a)) == str(a / ".lock") and lock.hold(str(a)) == str(a / ".lock")  # again: a no-op
    try:
        with lock.held(str(b)), lock.held(str(a)):
            pass
        # b was released at the end of its block; a, held before it, is still held.
        probe = ("import sys\nfrom svreid_jax.utils import lock\ntry:\n    lock.hold(sys.argv[1])\n"
                 "    print('got it')\nexcept lock.WorkdirLocked as e:\n    print(e)")
        for folder, expected in ((b, "got it"), (a, f"{a} is in use by process {os.getpid()} (lock {a}/.lock); wait "
                                                     "for it to end, or give this command another --workdir")):
            done = subprocess.run([sys.executable, "-c", probe, str(folder)], cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)
            assert done.stdout.strip() == expected, done.stderr
    finally:
        lock.release(str(a))


# --- --mode=splits ---------------------------------------------------------------------------------------


def _split_metrics(k, shift=0.0):
    return {"rank1": 0.1 * k + shift, "rank5": 0.5, "rank10": 0.6, "rank20": 1.0, "mAP": 0.2 + 0.02 * k,
            "num_valid_queries": 150.0}


def _fake_train(calls, shift=0.0, stop=None):
    """A stand-in for train_and_evaluate writing results.json as it does; `stop`: a split that diverges."""
    def train_fn(config, workdir):
        k = config.data.target.options.split_id
        calls.append(k)
        if k == stop:
            protocols.write_results(workdir, "results", {"status": "diverged", "step": 4, "message": "loss 1e9"}, "")
            raise train.TrainingStopped("training stopped: diverged at step 4", train.EXIT_STOPPED)
        metrics = _split_metrics(k, shift)
        protocols.write_results(workdir, "results", metrics, "")
        return metrics

    return train_fn


def test_splits_rerun_a_corrupt_or_stopped_split_and_never_average_it(tmp_path, caplog):
    config, calls = ilidsvid.get_config(), []
    first = splits.run_splits(config, str(tmp_path), range(3), train_fn=_fake_train(calls))
    assert calls == [0, 1, 2]
    summary = (tmp_path / "splits_results.json").read_bytes()
    # A full disk in the old in-place writer left 40 bytes of split 1's results.json.
    bad = tmp_path / "split_1" / "results.json"
    bad.write_bytes(bad.read_bytes()[:40])
    calls.clear()
    again = splits.run_splits(config, str(tmp_path), range(3), train_fn=_fake_train(calls))
    assert calls == [1] and again.mean == first.mean and again.std == first.std
    assert f"split 1: {bad} cannot be read as JSON (" in caplog.text and "running it again" in caplog.text

    # Split 2 diverges when run again: the run stops naming it, exit 3, and the summary is left as it was.
    (tmp_path / "split_2" / "results.json").write_text(json.dumps({"status": "diverged", "step": 4, "message": "x"}))
    calls.clear()
    with pytest.raises(train.TrainingStopped) as err:
        splits.run_splits(config, str(tmp_path), range(3), train_fn=_fake_train(calls, stop=2))
    assert str(err.value) == "split 2: training stopped: diverged at step 4" and err.value.exit_code == 3
    assert calls == [2] and (tmp_path / "splits_results.json").read_bytes() == summary
    assert "split 2: " + str(tmp_path / "split_2" / "results.json") + " says the run stopped (diverged at step 4: x)" \
        in caplog.text


def test_splits_reuse_only_results_of_the_same_settings(tmp_path, caplog):
    config, calls = ilidsvid.get_config(), []
    splits.run_splits(config, str(tmp_path), range(2), train_fn=_fake_train(calls))
    # A thread count cannot change results: both splits are read back.
    config.data.num_threads = 3
    calls.clear()
    splits.run_splits(config, str(tmp_path), range(2), train_fn=_fake_train(calls))
    assert calls == []
    # Another distance can: both run again (a real run resumes and only evaluates), with a warning naming it.
    config.eval.distance = "euclidean"
    result = splits.run_splits(config, str(tmp_path), range(2), train_fn=_fake_train(calls, shift=0.5))
    assert calls == [0, 1] and result.per_split[1]["rank1"] == pytest.approx(0.6)
    assert "was made with other settings: eval.distance ('cosine' → 'euclidean')" in caplog.text
    assert json.load(open(tmp_path / "split_1" / "results-1.json"))["rank1"] == pytest.approx(0.1)  # kept
    # results.json rewritten by another run in the split's folder since: not the recorded result, run again.
    protocols.write_results(str(tmp_path / "split_0"), "results", _split_metrics(0, shift=0.9), "")
    calls.clear()
    splits.run_splits(config, str(tmp_path), range(2), train_fn=_fake_train(calls, shift=0.5))
    assert calls == [0] and "is not the result" in caplog.text


def test_splits_usage_and_config_errors_are_one_line(tmp_path):
    assert _one_line(_main(tmp_path / "a", "--mode=splits", "--splits=3-x")) == (
        "svreid_jax: usage error: --splits='3-x': expected split ids like '0-9' or '0,3,5'")
    assert _one_line(_main(tmp_path / "b", "--mode=splits")) == (
        "svreid_jax: config error: --mode=splits trains one model per train/test split of a target whose reader takes "
        "a split_id (iLIDS-VID, PRID); config.data.target.name='mars' has none")


# --- one line instead of a traceback ---------------------------------------------------------------------


def test_hub_offline_and_a_wrong_cached_file_are_one_line(tmp_path):
    entry = hub.IMAGENET_RESNETS["18"]
    cache = tmp_path / "hub"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    args = ("--config.model.init_from=imagenet", "--config.model.depth=18")
    line = _one_line(_main(tmp_path / "a", *args, env=env))
    assert line.startswith("svreid_jax: weights error: model.init_from='imagenet': model.safetensors of ")
    assert line.endswith(f"/timm/resnet18.tv_in1k at bbd144b is not in the Hugging Face cache {cache} and "
                         "HF_HUB_OFFLINE is set; run once with network access, or download model.safetensors of "
                         f"timm/resnet18.tv_in1k (revision {entry.revision}) yourself and set model.init_from to "
                         "its path")
    cached = cache / "models--timm--resnet18.tv_in1k" / "snapshots" / entry.revision / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the weights")
    assert _one_line(_main(tmp_path / "b", *args, env=env)) == (
        f"svreid_jax: weights error: {cached} (timm/resnet18.tv_in1k@bbd144b/model.safetensors) has 15 bytes, "
        "expected 46,807,446; delete it and fetch again")
    assert cached.read_bytes() == b"not the weights"  # named, not deleted


def test_an_empty_target_train_split_is_one_line(micro_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(micro_run / "data", data)
    info = data / "target" / "info"
    (info / "train_name.txt").write_text("")
    scipy.io.savemat(str(info / "tracks_train_info.mat"), {"track_train_info": np.zeros((0, 4))})
    assert len(datasets.load("mars", str(data / "target")).train) == 0
    assert _one_line(_main(tmp_path / "run", f"--config.data.demo_root={data}")) == (
        f"svreid_jax: data error: data.target: the 'mars' reader on {data}/target gives an empty train split "
        "(0 tracklets; 10 query, 7 gallery); it is read from info/train_name.txt with info/tracks_train_info.mat "
        "(pid -1 rows dropped)")
    assert builders.saved_steps(str(tmp_path / "run" / "checkpoints")) == []


@pytest.mark.slow  # about 10 s: a restore and two command-line runs; the default stage keeps its 15-minute budget
def test_a_safetensors_init_from_in_the_evaluation_modes(micro_run, tmp_path, monkeypatch):
    # ImageNet-style weights (no classifier, no BN-neck) only started training: the workdir's checkpoint is
    # evaluated, the file read with safetensors, never handed to torch.load (here torch cannot be imported).
    imagenet = tmp_path / "resnet.safetensors"
    safetensors.numpy.save_file({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}, str(imagenet))
    config = demo.get_config("paper,micro")
    config.model.init_from = str(imagenet)
    monkeypatch.setitem(sys.modules, "torch", None)
    _, _, info = builders.restore_variables(config, str(micro_run))
    assert info.step == 2 and info.directory == str(micro_run / "checkpoints")
    monkeypatch.undo()

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    hint = ("set --config.model.init_from='' to evaluate the workdir's checkpoint, which holds the trained weights "
            "whatever training started from")
    line = _one_line(_main(tmp_path / "a", "--mode=extract", f"--data={tmp_path}",
                           f"--config.model.init_from={broken}"))
    assert line.startswith(f"svreid_jax: weights error: model.init_from={broken}: {broken}: cannot read it as a "
                           "safetensors file of numpy-readable tensors (") and line.endswith(hint)
    missing = tmp_path / "nowhere.safetensors"
    assert _one_line(_main(tmp_path / "b", "--mode=visualize", f"--config.model.init_from={missing}")) == (
        f"svreid_jax: weights error: model.init_from={missing}: no such file (evaluation modes read it when it is one "
        f"of the authors' student checkpoints); {hint}")


def test_visualize_draws_packed_tracklets_as_their_folders(micro_run, tmp_path):
    folder = datasets.load("mars", str(micro_run / "data" / "target"))
    packed = pack.load_packed(pack.pack("mars", str(micro_run / "data" / "target"), str(tmp_path / "packed"),
                                        progress=False))
    assert packed.query[0].frames[0] == "packed://query/0/0"
    lists = [visualize.RankedList(query=q, gallery=np.arange(2, 6), distances=np.linspace(0.1, 0.4, 4),
                                  correct=np.array([True, False, False, True])) for q in (0, 3)]
    layout = visualize.GridLayout(top_k=4)
    # Slices of the packed splits, as evaluation hands them over, address frames of the whole split.
    images = [np.asarray(visualize.draw_ranked_grid(s.query[:5], s.gallery, lists, layout=layout, title="t"))
              for s in (folder, packed)]
    np.testing.assert_array_equal(images[1], images[0])
    assert images[0].std() > 0  # frames were drawn, not blank cells


_NAN_FEATURES_MAIN = textwrap.dedent("""
    import sys
    import numpy as np
    from svreid_jax.evaluation import evaluate
    real = evaluate.Evaluator.features
    def nan_features(self, *args, **kwargs):  # a model whose embeddings went non-finite
        feats = np.array(real(self, *args, **kwargs))
        feats[0] = np.nan
        return feats
    evaluate.Evaluator.features = nan_features
    from svreid_jax import main
    sys.argv = ["svreid-jax", *sys.argv[1:]]
    main.run()
""")


def test_non_finite_features_in_eval_are_one_line_and_report_nothing(run_copy):
    (run_copy / "eval_results.json").write_text('{"rank1": 0.25}\n')
    done = subprocess.run([sys.executable, "-c", _NAN_FEATURES_MAIN, CONFIG, f"--workdir={run_copy}", "--mode=eval"],
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=300)
    line = _one_line(done)
    assert line.startswith("svreid_jax: evaluation error: evaluation features cannot be ranked (query: 1 of "), line
    assert "non-finite" in line
    assert (run_copy / "eval_results.json").read_text() == '{"rank1": 0.25}\n'  # no metric from NaN features
    assert not [n for n in os.listdir(run_copy) if n.startswith("eval_results-")]
