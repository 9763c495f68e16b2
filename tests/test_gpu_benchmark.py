"""benchmarks/gpu/run.py, the prepared GPU measurement: its dry run on CPU (each kind of part, tiny sizes, 2 fake
devices), the time budget (skip what does not fit, kill what overruns), the report's arithmetic and verdicts, the
peak-flops table, and the list of wheels that travel to the GPU machine."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "run.py")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_run = _load("gpu_run", SCRIPT)


def _run(tmp_path, *flags, timeout=900):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--quiet", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    path = out / "gpu_benchmark.json"
    return done, (json.loads(path.read_text()) if path.exists() else None), out


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    # Every kind of part once, JAX alone in the step (the torch-marked test below runs the PyTorch rows);
    # step_f32 / _remat / _b64 are step_bf16 with other options, smoke is the command tests/test_main.py runs.
    return _run(tmp_path_factory.mktemp("dry"), "--dry-run", "--no-torch", "--parts", "env,step_bf16,input,ranking,eval",
                "--budget", "1500")


@pytest.mark.slow  # shares the dry run of every part (over a minute of compiling)
def test_dry_run_finishes_every_part_and_writes_the_report(dry_run):
    done, report, out = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert report["dry_run"] and report["order"] == ["env", "step_bf16", "input", "ranking", "eval"]
    assert {name: e["status"] for name, e in report["parts"].items()} == dict.fromkeys(report["order"], "ok")
    # The table is printed last and written beside the JSON; each part's own output is in the log.
    assert done.stdout.rstrip().endswith(report["table"].rstrip().splitlines()[-1])
    assert (out / "gpu_benchmark.md").read_text().strip() == report["table"].strip()
    assert "## Goals" in report["table"] and "DRY RUN" in report["table"]
    log = (out / "gpu_benchmark.log").read_text()
    assert "[step_bf16] " in log and "[eval] " in log


@pytest.mark.slow  # shares the dry run of every part (over a minute of compiling)
def test_dry_run_env_part_sees_the_fake_devices(dry_run):
    env = dry_run[1]["parts"]["env"]
    import jax

    assert env["versions"]["jax"] == jax.__version__ and env["jax_backend"] == "cpu"
    assert len(env["devices"]) == 2  # --xla_force_host_platform_device_count=2
    assert env["measured"]["jax_matmul_bfloat16"] > 0 and env["measured"]["jax_copy_bytes_per_s"] > 0


@pytest.mark.slow  # shares the dry run of every part (over a minute of compiling)
def test_dry_run_step_part_times_the_paper_step_over_both_devices(dry_run):
    report = dry_run[1]
    step = report["parts"]["step_bf16"]
    setting = step["setting"]
    assert setting["devices"] == 2 and setting["clips_per_domain"] == 4 and setting["dtype"] == "bfloat16"
    assert step["training_frames_per_step"] == 2 * 4 * setting["frames"]
    [jax_result] = step["results"]
    assert jax_result["framework"].startswith("JAX")
    assert len(jax_result["step_times_s"]) == setting["steps"] and jax_result["compile_s"] > 0
    assert jax_result["back_to_back_steps"] == setting["back_to_back"] and jax_result["back_to_back_s"] > 0
    assert math.isfinite(jax_result["metrics"]["loss"]) and jax_result["metrics"]["skipped"] == 0.0
    # FLOPs: the analytical count per device (the global step split over the 2 devices); XLA's CPU count for one
    # device's program is plausible beside it.
    assert jax_result["flops"] == jax_result["analytic_flops"]["total"] / 2 == jax_result["step_flops"] / 2
    assert jax_result["xla_flops_plausible"]
    clip_bytes = setting["frames"] * setting["height"] * setting["width"] * 3
    assert step["host_to_device_s"]["bytes"] == 2 * 4 * clip_bytes + 4 * 4  # uint8 source + target, int32 pids
    row = next(r for r in gpu_run.step_rows(report) if r["framework"].startswith("JAX"))
    assert row["training_fps"] == pytest.approx(step["training_frames_per_step"] / jax_result["step_s"])
    assert row["mfu"] is None  # no datasheet peak for a CPU: n/a, not a made-up figure
    peak = max(report["parts"]["env"]["measured"][f"{fw}_matmul_bfloat16"] for fw in ("jax", "torch")
               if f"{fw}_matmul_bfloat16" in report["parts"]["env"]["measured"])
    assert row["mfu_measured"] == pytest.approx(jax_result["flops"] / jax_result["step_s"] / peak)


@pytest.mark.slow  # shares the dry run of every part (over a minute of compiling)
def test_dry_run_ranking_input_and_eval_parts(dry_run):
    parts = dry_run[1]["parts"]
    ranking = parts["ranking"]
    assert ranking["max_abs_diff_vs_numpy"]["mAP"] < 1e-6 and ranking["max_abs_diff_vs_numpy"]["cmc"] < 1e-6
    assert 0 < ranking["ranking_s"]["median"] <= ranking["ranking_s"]["first_call"]
    size = gpu_run.sizes(True)
    inp = parts["input"]
    assert inp["frames_per_step"] == (size["input_pk"][0] * size["input_pk"][1] + size["input_target"]) * size["frames"]
    assert [r["threads_per_stream"] for r in inp["rows"]] == list(size["input_threads"])
    for row in inp["rows"]:
        assert row["frames"] == size["input_batches"] * inp["frames_per_step"] and row["frames_per_s"] > 0
        assert row["prefetch"] >= row["threads_per_stream"] == row["in_flight_per_stream"]
    ev = parts["eval"]
    tracklets = size["data"]["num_identities"] * size["data"]["tracklets_per_identity"]
    dense_clips = tracklets * (size["data"]["frames_per_tracklet"] // 4)
    assert [(r["method"], r["clips"]) for r in ev["end_to_end"]] == [("restricted_begin", tracklets),
                                                                     ("dense", dense_clips)]
    assert all(r["finite"] for r in ev["end_to_end"]) and ev["model_alone"][0]["clips_per_s"] > 0
    assert ev["mars_test_estimate_s"]["clips"] == gpu_run.MARS_QUERY + gpu_run.MARS_GALLERY


@pytest.mark.slow  # compiles the JAX step and captures the PyTorch step with torch.compile (minutes on 2 cores)
@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_dry_run_step_part_runs_pytorch_beside_jax(tmp_path):  # compiled and eager
    done, report, _ = _run(tmp_path, "--dry-run", "--parts", "step_bf16", "--budget", "1500")
    assert done.returncode == 0, done.stdout[-4000:]
    results = report["parts"]["step_bf16"]["results"]
    assert [gpu_run.framework_kind(r["framework"]) for r in results] == ["jax", "torch_compiled", "torch"]
    assert "torch.compile aot_eager" in results[1]["framework"] and "fused Adam" in results[1]["framework"]
    assert all("error" not in r and len(r["step_times_s"]) == 2 and r["back_to_back_s"] > 0 for r in results)
    assert results[1]["compile_s"] > 0 and results[2]["compile_s"] is None
    assert results[2]["host_syncs"] == 0  # the eager step reads no tensor value back
    rows = gpu_run.step_rows(report)
    assert rows[1]["flops"] == results[0]["step_flops"]  # PyTorch does the whole global step on its one device
    ratio = rows[0]["training_fps"] / rows[1]["training_fps"]
    check = gpu_run.acceptance(report)[0]
    assert check[1].startswith(f"{ratio:.2f}×") and check[2] == ("PASS" if ratio >= 1.2 else "FAIL")
    assert "| bf16: Rtiny bfloat16" in report["table"] and "torch.compile" in report["table"]


def _torch_baseline():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import torch_baseline

    return torch_baseline


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_step_reads_nothing_back_and_skips_a_non_finite_update_on_the_device():
    import numpy as np
    import torch

    tb = _torch_baseline()
    rng = np.random.default_rng(0)
    video = lambda: torch.from_numpy(rng.integers(0, 256, (4, 2, 32, 16, 3), dtype=np.uint8))  # noqa: E731
    trainer = tb.Trainer(8, depth="tiny", kmeans_clusters=2, kmeans_iters=3)
    source, pid, target = video(), torch.tensor([0, 0, 1, 1]), video()
    reads = tb.host_reads(lambda: trainer.step(source, pid, target))
    assert reads == []  # no float(), .item(), `if tensor` ... inside a step
    assert float(trainer.step_count) == 1.0
    # Gradients that overflow (a BN-neck scale of 1e37: finite, but the gradient norm is inf): fused Adam's found_inf
    # leaves every parameter and moment alone, and the teacher does not move.
    with torch.no_grad():
        trainer.student.bnneck.weight.fill_(1e37)
    kept = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    moments = {n: trainer.opt.state[p]["exp_avg"].clone() for n, p in trainer.student.named_parameters()}
    teacher = {n: p.detach().clone() for n, p in trainer.teacher.named_parameters()}
    metrics = trainer.step(source, pid, target)
    assert float(metrics["skipped"]) == 1.0 and not torch.isfinite(metrics["grad_norm"])
    for n, p in trainer.student.named_parameters():
        assert torch.equal(p, kept[n]), n
        assert torch.equal(trainer.opt.state[p]["exp_avg"], moments[n]), n
    for n, p in trainer.teacher.named_parameters():
        assert torch.equal(p, teacher[n]), n
    assert float(trainer.step_count) == 2.0  # the step still counts, as in the JAX step


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_device_kmeans_finds_planted_clusters_and_survives_identical_points():
    import torch

    tb = _torch_baseline()
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    truth = torch.arange(30) % 3
    points = centres[truth] + 0.1 * torch.randn(30, 2)
    for seed in range(5):
        torch.manual_seed(seed)
        cent, assign = tb.kmeans(points, 3, 5)
        # k-means++ puts one seed in each far-apart blob, so the clusters are the blobs (up to their labels).
        pairs = set(zip(truth.tolist(), assign.tolist()))
        assert len(pairs) == 3 and len({a for _, a in pairs}) == 3, seed
        assert torch.allclose(cent[assign], centres[truth], atol=0.2)
    same = torch.ones(6, 4)  # every D² weight 0 after the first seed: still valid indices, no NaN
    cent, assign = tb.kmeans(same, 3, 2)
    assert torch.equal(cent, torch.ones(3, 4)) and assign.min() >= 0 and assign.max() < 3


@pytest.mark.slow  # about 8 s of child processes; the default stage keeps its 15-minute budget
def test_budget_skips_a_part_that_cannot_fit_and_kills_one_that_overruns_its_cap(tmp_path):
    # 9 s budget, 5 s kept for the report: env (cap 100 s) is skipped without starting; smoke (cap 1 s, really
    # the micro demo: tens of seconds) starts and is killed with its child at its cap.
    done, report, _ = _run(tmp_path, "--dry-run", "--parts", "env,smoke", "--budget", "9", "--cap", "env=100",
                           "--cap", "smoke=1", timeout=180)
    assert done.returncode == 1  # a killed part counts as failed
    env, smoke = report["parts"]["env"], report["parts"]["smoke"]
    assert env["status"] == "skipped" and "cap 100 s" in env["note"] and "seconds" not in env
    assert smoke["status"] == "killed" and smoke["seconds"] < 4 and "cap" in smoke["error"]
    assert report["elapsed_s"] < 15
    assert re.search(r"\| smoke \| 1 s \| killed \|", report["table"])
    lingering = subprocess.run(["pgrep", "-f", "configs/demo.py:paper,micro --workdir=.*svreid_smoke_"],
                               capture_output=True, text=True)
    assert lingering.stdout.strip() == ""  # the main.py the part had started went with it


@pytest.mark.slow  # about 8 s of child processes; the default stage keeps its 15-minute budget
def test_the_plan_is_printed_in_order_with_every_cap(tmp_path):
    # A 1 s budget: every part is skipped, but the plan and each part's verdict are printed first.
    # --no-torch: the default stage has no torch, and the preflight would stop the run before the plan.
    done, report, _ = _run(tmp_path, "--dry-run", "--budget", "1", "--no-torch", timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = next(line for line in done.stdout.splitlines() if line.startswith("== plan"))
    named = re.findall(r"(\w+) (\d+) s", plan)
    assert [n for n, _ in named if n in gpu_run.PART_NAMES] == list(gpu_run.PART_NAMES)
    assert {n: float(c) for n, c in named if n in gpu_run.PART_NAMES} == {p.name: p.dry_cap_s for p in gpu_run.PARTS}
    assert report["order"] == list(gpu_run.PART_NAMES)
    assert all(e["status"] == "skipped" for e in report["parts"].values())


def test_parts_order_and_caps_fit_the_device_budget():
    assert gpu_run.PART_NAMES == ("env", "step_bf16", "input", "ranking", "smoke", "eval", "step_bf16_b64",
                                  "step_f32", "step_bf16_remat")
    planned = [p for p in gpu_run.PARTS if p.planned]
    assert [p.name for p in gpu_run.PARTS if not p.planned] == ["step_f32", "step_bf16_remat"]  # the last two
    assert sum(p.cap_s for p in planned) <= gpu_run.USABLE_S
    assert gpu_run.USABLE_S == gpu_run.DEVICE_BUDGET_S - gpu_run.INSTALL_RESERVE_S - gpu_run.REPORT_RESERVE_S
    # run.sh's deadline is the budget the caps were planned against.
    run_sh = open(os.path.join(ROOT, "benchmarks", "gpu", "run.sh")).read()
    assert f"SVREID_GPU_BUDGET:-{gpu_run.DEVICE_BUDGET_S:.0f}" in run_sh
    step = next(p for p in gpu_run.PARTS if p.name == "step_bf16")
    assert step.options["frameworks"] == ["jax", "torch_compiled", "torch"]


def test_unknown_part_and_bad_cap_are_refused(tmp_path):
    done, report, _ = _run(tmp_path, "--parts", "env,nope", timeout=60)
    assert done.returncode != 0 and "unknown part(s) ['nope']" in done.stderr and report is None
    done, _, _ = _run(tmp_path, "--cap", "env", timeout=60)
    assert done.returncode == 2 and "PART=SECONDS" in done.stderr


def test_a_missing_package_stops_the_run_before_any_part(tmp_path):
    # A grain that does not import (as on a device image without the carried wheels): one line, exit 2, no part.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "grain.py").write_text("raise ImportError('no grain on this machine')\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--no-torch", "--parts", "env", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == ("run.py: preflight failed, nothing measured: cannot import grain: ImportError: "
                                   "no grain on this machine")
    assert not (out / "gpu_benchmark.json").exists()


def test_run_sh_stops_at_once_without_wheels(tmp_path):
    # A python that lacks the wheels' packages and no .whl/: one line naming them, exit 1, nothing run.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncase \"$1\" in --version) echo 'Python 3.12.0';; -c) echo 'grain clu';; esac\n")
    fake.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "gpu").mkdir(parents=True)
    for name in ("run.sh", "run.py"):
        (repo / "benchmarks" / "gpu" / name).write_text(open(os.path.join(ROOT, "benchmarks", "gpu", name)).read())
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu" / "run.sh")], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out")))
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1] == ("run.sh: no .whl/ folder and this python lacks: grain clu; run "
                                                    "'bash benchmarks/gpu/wheels.sh' and carry .whl")


def test_a_result_without_an_error_is_kept_whatever_the_exit_status():
    status, data = gpu_run.part_outcome(-11, {"results": [1]})  # crashed while exiting, after writing its result
    assert status == "ok" and data["results"] == [1] and data["exit_note"] == "exited -11 after writing its result"
    assert gpu_run.part_outcome(0, {"x": 1}) == ("ok", {"x": 1})
    assert gpu_run.part_outcome(1, {"error": "OutOfMemoryError: x"}) == ("failed",
                                                                         {"error": "exited 1: OutOfMemoryError: x"})
    assert gpu_run.part_outcome(-9, None) == ("failed", {"error": "exited -9"})


# ---------------------------------------------------------------------------------------------
# The report on a made-up device run


def _step_entry(results, dtype="bfloat16", peak=1000e12):
    return {"status": "ok", "seconds": 100.0, "notes": [], "peak_flops": peak, "peak_source": "spec sheet",
            "setting": {"dtype": dtype, "remat": False, "depth": "50", "height": 256, "width": 128, "frames": 4,
                        "clips_per_domain": 32, "devices": 1, "steps": 20, "warmup": 3, "back_to_back": 10,
                        "kmeans_clusters": 8},
            "training_frames_per_step": 256, "all_frames_per_step": 384, "results": results}


def _timing(framework, step_s, compile_s=None, peak=2**34, **extra):
    return {"framework": framework, "step_s": step_s, "step_times_s": [step_s, step_s * 1.1], "first_step_s": 1.0,
            "compile_s": compile_s, "init_s": 5.0, "peak_bytes": peak, "mem_source": "device",
            "back_to_back_s": step_s * 0.9, "host_syncs": 0, **extra}


ANALYTIC = {"total": 20e12, "conv": 19.9e12, "dot": 0.1e12, "convs": 369, "dots": 67, "forward": 2.9e12,
            "first_conv": 0.05e12, "student_forward": 5.8e12, "teacher_forward": 2.9e12, "backward": 11.5e12,
            "rest": -0.2e12, "layers": 58}


def _made_up_report():
    jax_timing = _timing("JAX 0.11.2 (jit, XLA)", 0.100, 40.0, flops=20e12, step_flops=20e12, analytic_flops=ANALYTIC,
                         xla_flops=-1.0, xla_flops_plausible=False)
    return {"dry_run": False, "started_utc": "2026-12-01T00:00:00+00:00", "budget_s": 445.0, "elapsed_s": 440.0,
            "order": ["env", "step_bf16", "step_bf16_torch_compiled_alone", "input", "ranking", "smoke", "eval",
                      "step_f32"],
            "parts": {
                "env": {"status": "ok", "seconds": 20.0, "cap_s": 25, "versions": {"jax": "0.11.2", "torch": "2.11.0"},
                        "device_kind": "NVIDIA H100 80GB HBM3", "devices": ["cuda:0"], "jax_backend": "gpu",
                        "device_memory_bytes": 80 * 2**30, "cpu_count": 16, "python": "3.12.3",
                        "torch": {"cuda": "13.0", "cudnn": 91000, "device": "NVIDIA H100 80GB HBM3"},
                        "nvidia_smi": "name, driver_version\nNVIDIA H100 80GB HBM3, 580.159.04", "matmul_n": 8192,
                        "measured": {"jax_matmul_bfloat16": 790e12, "torch_matmul_bfloat16": 800e12,
                                     "jax_copy_bytes_per_s": 3.0e12}},
                # JAX and PyTorch eager ran; PyTorch compiled ran out of memory beside them and was rerun alone.
                "step_bf16": _step_entry([jax_timing,
                                          {"framework": "PyTorch compiled",
                                           "error": "OutOfMemoryError: CUDA out of memory."},
                                          _timing("PyTorch 2.11.0 (eager, fused Adam)", 0.200)]),
                "step_bf16_torch_compiled_alone": _step_entry(
                    [_timing("PyTorch 2.11.0 (torch.compile, fused Adam)", 0.125, None)]),
                "input": {"status": "ok", "seconds": 30.0, "decoder": "auto", "batch": {"source": 32, "target": 32},
                          "frames_per_step": 256,
                          "data": {"tracklets": 192, "frames_per_tracklet": 16, "height": 256, "width": 128,
                                   "mean_jpeg_bytes": 9000.0},
                          "rows": [{"threads_per_stream": 2, "total_threads": 4, "prefetch": 4,
                                    "in_flight_per_stream": 2, "frames_per_s": 1500.0, "frames_per_cpu_s": 800.0},
                                   {"threads_per_stream": 8, "total_threads": 16, "prefetch": 16,
                                    "in_flight_per_stream": 8, "frames_per_s": 3000.0, "frames_per_cpu_s": 700.0}]},
                "ranking": {"status": "ok", "seconds": 10.0, "problem": {"queries": 1980, "gallery": 9330},
                            "ranking_s": {"median": 0.012, "min": 0.011, "first_call": 0.5},
                            "distance_s": {"median": 0.002}, "rank1": 0.8, "mAP": 0.5,
                            "max_abs_diff_vs_numpy": {"mAP": 0.0, "cmc": 0.0}},
                "smoke": {"status": "failed", "seconds": 5.0, "cap_s": 70, "error": "exited 1"},
                "eval": {"status": "ok", "seconds": 40.0, "dtype": "bfloat16", "decoding_threads": 16,
                         "model_alone": [{"batch": 32, "clips_per_s": 2000.0, "median_s": 0.016, "first_call_s": 9.0}],
                         "end_to_end": [{"method": "dense", "tracklets": 192, "clips": 768, "seconds": 1.0,
                                         "clips_per_s": 768.0, "batch": 32}],
                         "mars_test_estimate_s": {"model_alone": 5.7, "end_to_end": 14.7, "clips": 11310}},
                "step_f32": {"status": "skipped", "cap_s": 120, "planned": False,
                             "note": "cap 120 s, 90 s left in the budget"},
            }}


def test_goals_verdicts_and_figures_of_a_made_up_run():
    report = _made_up_report()
    checks = {c[0].split(" ")[0]: c[1:] for c in gpu_run.acceptance(report)}
    # 256 training frames per step: JAX 2560/s, PyTorch compiled (its rerun alone) 2048/s → 1.25×; eager 1280/s.
    assert checks["JAX"] == ("1.25×; 2.00× eager", "PASS")
    # 20 TFLOP per step / 0.1 s = 200 TFLOP/s: 20 % of the 1000 datasheet, 25 % of the 800 measured (PyTorch's).
    assert checks["MFU"] == ("20.0 % (25.0 % of the measured matmul)", "PASS")
    assert checks["input"] == ("3000 frames/s (16 threads) = 1.17× 2560", "FAIL")  # under 1.5×
    assert checks["compile"] == ("bf16 40.0 s", "PASS")
    assert checks["MARS-size"] == ("12.0 ms", "FAIL")
    rows = gpu_run.step_rows(report)
    compiled = next(r for r in rows if r["part"] == "step_bf16_torch_compiled_alone")
    assert compiled["kind"] == "torch_compiled"
    assert compiled["mfu"] == pytest.approx(20e12 / 0.125 / 1000e12)  # the analytical count, from its twin
    assert compiled["mfu_measured"] == pytest.approx(20e12 / 0.125 / 800e12)
    table = gpu_run.render(report)
    assert "| step_f32 | 120 s (if time is left) | skipped | — | cap 120 s" in table
    assert "| smoke | 70 s | failed | 5.0 | exited 1 |" in table
    assert "failed: OutOfMemoryError" in table and "NVIDIA H100 80GB HBM3" in table
    assert "JAX ÷ PyTorch eager training frames/s 2.00×" in table
    assert "XLA's cost analysis: n/a (reported -1.0: not plausible)" in table  # a GPU's custom calls
    assert "FLOPs per step (analytical, benchmarks/flops.py) 20.000 TFLOP" in table
    assert "| 8 + 8 | 16 | 8 + 8 | 3000 |" in table
    assert "MARS test (11310 one-clip tracklets): about 14.7 s end to end" in table


def test_a_framework_that_ran_out_of_memory_or_a_dead_process_gets_a_rerun_alone():
    both = next(p for p in gpu_run.PARTS if p.name == "step_bf16")
    report = _made_up_report()
    [alone] = gpu_run.reruns(both, "ok", report["parts"]["step_bf16"])
    assert alone.name == "step_bf16_torch_compiled_alone" and not alone.planned
    assert alone.options == {"dtype": "bfloat16", "frameworks": ["torch_compiled"], "devices": 1}  # the twin's
    assert [p.name for p in gpu_run.reruns(both, "failed", {})] == ["step_bf16_jax_alone",
                                                                    "step_bf16_torch_compiled_alone",
                                                                    "step_bf16_torch_alone"]
    assert gpu_run.reruns(both, "killed", {}) == []  # out of time: nothing more to run
    jax_only = next(p for p in gpu_run.PARTS if p.name == "step_bf16_remat")
    assert gpu_run.reruns(jax_only, "failed", {}) == []
    assert gpu_run.base_part("step_bf16_jax_alone") == "step_bf16"
    assert gpu_run.base_part("step_bf16_torch_compiled_alone") == "step_bf16"


def test_dense_peaks_by_device_name():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import train_step

    assert train_step.spec_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989.5e12
    assert train_step.spec_peak("NVIDIA H200", "bfloat16")[0] == 989.5e12
    assert train_step.spec_peak("NVIDIA H100 PCIe", "bfloat16")[0] == 756.5e12  # not the SXM figure
    assert train_step.spec_peak("NVIDIA H200 NVL", "bfloat16")[0] == 835.5e12
    peak, source = train_step.spec_peak("NVIDIA H100 80GB HBM3", "float32")
    assert peak == 494.5e12 and "TF32" in source  # f32 convolutions and matmuls run on the TF32 tensor cores
    assert train_step.spec_peak("Some GPU", "bfloat16")[0] is None


# ---------------------------------------------------------------------------------------------
# The wheels that travel


def _requirement_names(lines):
    return {re.split(r"[=<>\[ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-") for line in lines}


def test_every_dependency_travels_as_a_wheel_or_is_on_the_image():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["project"]["dependencies"]
    text = open(os.path.join(ROOT, "benchmarks", "gpu", "wheels.txt")).read()
    wheels = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    image = re.search(r"^# image: (.*)$", text, re.MULTILINE).group(1).split()
    not_needed = re.search(r"^# not-needed: (\S+)", text, re.MULTILINE).group(1).split(",")
    covered = _requirement_names(wheels) | _requirement_names(image) | _requirement_names(not_needed)
    assert _requirement_names(requires) <= covered, _requirement_names(requires) - covered
    # A wheel travels at the version constraints.txt pins (the version CI tests).
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[_requirement_names([name]).pop()] = version
    for line in wheels:
        name, version = line.split("==")
        assert pins.get(_requirement_names([name]).pop()) == version, line
    assert all("==" in line for line in wheels)  # one version of each, or the device's install stops
