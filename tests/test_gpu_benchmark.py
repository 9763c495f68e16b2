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
    # Every kind of part once; step_f32 / _remat / _b64 are step_bf16 with other options, smoke is the command
    # tests/test_main.py runs.
    return _run(tmp_path_factory.mktemp("dry"), "--dry-run", "--parts", "env,step_bf16,ranking,input,eval",
                "--budget", "1200")


@pytest.mark.slow  # shares the dry run of every part (over a minute of compiling)
def test_dry_run_finishes_every_part_and_writes_the_report(dry_run):
    done, report, out = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert report["dry_run"] and report["order"] == ["env", "step_bf16", "ranking", "input", "eval"]
    assert {name: e["status"] for name, e in report["parts"].items()} == dict.fromkeys(report["order"], "ok")
    # The table is printed last and written beside the JSON; each part's own output is in the log.
    assert done.stdout.rstrip().endswith(report["table"].rstrip().splitlines()[-1])
    assert (out / "gpu_benchmark.md").read_text().strip() == report["table"].strip()
    assert "## Acceptance (issue 19)" in report["table"] and "DRY RUN" in report["table"]
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
    jax_result = step["results"][0]
    assert jax_result["framework"].startswith("JAX")
    assert len(jax_result["step_times_s"]) == setting["steps"] and jax_result["compile_s"] > 0
    assert jax_result["flops"] > 0 and math.isfinite(jax_result["metrics"]["loss"])
    assert jax_result["metrics"]["skipped"] == 0.0
    clip_bytes = setting["frames"] * setting["height"] * setting["width"] * 3
    assert step["host_to_device_s"]["bytes"] == 2 * 4 * clip_bytes + 4 * 4  # uint8 source + target, int32 pids
    row = next(r for r in gpu_run.step_rows(report) if r["framework"].startswith("JAX"))
    assert row["training_fps"] == pytest.approx(step["training_frames_per_step"] / jax_result["step_s"])
    assert row["mfu"] == pytest.approx(jax_result["flops"] / jax_result["step_s"] / step["peak_flops"])
    torch_rows = [r for r in step["results"] if r["framework"].startswith("PyTorch")]
    assert torch_rows or any("PyTorch side skipped" in n for n in step["notes"])


@pytest.mark.slow  # shares the dry run of every part (over a minute of compiling)
def test_dry_run_ranking_input_and_eval_parts(dry_run):
    parts = dry_run[1]["parts"]
    ranking = parts["ranking"]
    assert ranking["max_abs_diff_vs_numpy"]["mAP"] < 1e-6 and ranking["max_abs_diff_vs_numpy"]["cmc"] < 1e-6
    assert 0 < ranking["ranking_s"]["median"] <= ranking["ranking_s"]["first_call"]
    size = gpu_run.sizes(True)
    inp = parts["input"]
    assert inp["frames_per_step"] == (size["input_pk"][0] * size["input_pk"][1] + size["input_target"]) * size["frames"]
    for row in inp["rows"]:
        assert row["frames"] == size["input_batches"] * inp["frames_per_step"] and row["frames_per_s"] > 0
    ev = parts["eval"]
    tracklets = size["data"]["num_identities"] * size["data"]["tracklets_per_identity"]
    dense_clips = tracklets * (size["data"]["frames_per_tracklet"] // 4)
    assert [(r["method"], r["clips"]) for r in ev["end_to_end"]] == [("restricted_begin", tracklets),
                                                                     ("dense", dense_clips)]
    assert all(r["finite"] for r in ev["end_to_end"]) and ev["model_alone"][0]["clips_per_s"] > 0
    assert ev["mars_test_estimate_s"]["clips"] == gpu_run.MARS_QUERY + gpu_run.MARS_GALLERY


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_dry_run_step_part_runs_pytorch_beside_jax(tmp_path):
    done, report, _ = _run(tmp_path, "--dry-run", "--parts", "step_bf16", "--budget", "900")
    assert done.returncode == 0, done.stdout[-4000:]
    results = report["parts"]["step_bf16"]["results"]
    assert [r["framework"].split()[0] for r in results] == ["JAX", "PyTorch"]
    assert all("error" not in r and len(r["step_times_s"]) == 2 for r in results)
    rows = gpu_run.step_rows(report)
    ratio = rows[0]["training_fps"] / rows[1]["training_fps"]
    check = gpu_run.acceptance(report)[0]
    assert check[1] == f"{ratio:.2f}×" and check[2] == ("PASS" if ratio >= 1.3 else "FAIL")


def test_budget_skips_a_part_that_cannot_fit_and_kills_one_that_overruns(tmp_path):
    # 9 s budget, 5 s kept for the report: env (said to need 100 s) is skipped without starting; smoke (said to
    # need 1 s, really the micro demo: tens of seconds) starts and is killed with its child at the deadline.
    done, report, _ = _run(tmp_path, "--dry-run", "--parts", "env,smoke", "--budget", "9", "--estimate", "env=100",
                           "--estimate", "smoke=1", timeout=120)
    assert done.returncode == 1  # a killed part counts as failed
    env, smoke = report["parts"]["env"], report["parts"]["smoke"]
    assert env["status"] == "skipped" and "needs about 100 s" in env["note"] and "seconds" not in env
    assert smoke["status"] == "killed" and smoke["seconds"] < 8
    assert report["elapsed_s"] < 15
    assert re.search(r"\| smoke \| killed \|", report["table"])
    lingering = subprocess.run(["pgrep", "-f", "configs/demo.py:paper,micro --workdir=.*svreid_smoke_"],
                               capture_output=True, text=True)
    assert lingering.stdout.strip() == ""  # the main.py the part had started went with it


def test_unknown_part_and_bad_estimate_are_refused(tmp_path):
    done, report, _ = _run(tmp_path, "--parts", "env,nope", timeout=60)
    assert done.returncode != 0 and "unknown part(s) ['nope']" in done.stderr and report is None
    done, _, _ = _run(tmp_path, "--estimate", "env", timeout=60)
    assert done.returncode == 2 and "PART=SECONDS" in done.stderr


# ---------------------------------------------------------------------------------------------
# The report on a made-up device run


def _step_entry(results, dtype="bfloat16", peak=1000e12):
    return {"status": "ok", "seconds": 100.0, "notes": [], "peak_flops": peak, "peak_source": "spec sheet",
            "setting": {"dtype": dtype, "remat": False, "depth": "50", "height": 256, "width": 128, "frames": 4,
                        "clips_per_domain": 32, "devices": 1, "steps": 20, "warmup": 3, "kmeans_clusters": 8},
            "training_frames_per_step": 256, "all_frames_per_step": 384, "results": results}


def _timing(framework, step_s, compile_s=None, flops=None, peak=2**34):
    return {"framework": framework, "step_s": step_s, "step_times_s": [step_s, step_s * 1.1], "first_step_s": 1.0,
            "compile_s": compile_s, "init_s": 5.0, "flops": flops, "peak_bytes": peak, "mem_source": "device"}


def _made_up_report():
    return {"dry_run": False, "started_utc": "2026-12-01T00:00:00+00:00", "budget_s": 480.0, "elapsed_s": 470.0,
            "order": ["env", "step_bf16", "step_bf16_torch_alone", "ranking", "input", "step_f32", "eval", "smoke"],
            "parts": {
                "env": {"status": "ok", "seconds": 20.0, "versions": {"jax": "0.11.2", "torch": "2.11.0"},
                        "device_kind": "NVIDIA H100 80GB HBM3", "devices": ["cuda:0"], "jax_backend": "gpu",
                        "device_memory_bytes": 80 * 2**30, "cpu_count": 16, "python": "3.12.3",
                        "torch": {"cuda": "13.0", "cudnn": 91000, "device": "NVIDIA H100 80GB HBM3"},
                        "nvidia_smi": "name, driver_version\nNVIDIA H100 80GB HBM3, 580.159.04", "matmul_n": 8192,
                        "measured": {"jax_matmul_bfloat16": 790e12, "jax_copy_bytes_per_s": 3.0e12}},
                # JAX ran; PyTorch ran out of memory beside it and was rerun alone.
                "step_bf16": _step_entry([_timing("JAX 0.11.2 (jit, XLA)", 0.100, 40.0, 20e12),
                                          {"framework": "PyTorch", "error": "OutOfMemoryError: CUDA out of memory."}]),
                "step_bf16_torch_alone": _step_entry([_timing("PyTorch 2.11.0 (eager)", 0.150)]),
                "ranking": {"status": "ok", "seconds": 10.0, "problem": {"queries": 1980, "gallery": 9330},
                            "ranking_s": {"median": 0.012, "min": 0.011, "first_call": 0.5},
                            "distance_s": {"median": 0.002}, "rank1": 0.8, "mAP": 0.5,
                            "max_abs_diff_vs_numpy": {"mAP": 0.0, "cmc": 0.0}},
                "input": {"status": "ok", "seconds": 30.0, "decoder": "auto", "batch": {"source": 32, "target": 32},
                          "frames_per_step": 256,
                          "data": {"tracklets": 192, "frames_per_tracklet": 16, "height": 256, "width": 128,
                                   "mean_jpeg_bytes": 9000.0},
                          "rows": [{"threads_per_stream": 2, "total_threads": 4, "frames_per_s": 1500.0,
                                    "frames_per_cpu_s": 800.0},
                                   {"threads_per_stream": 8, "total_threads": 16, "frames_per_s": 3000.0,
                                    "frames_per_cpu_s": 700.0}]},
                "step_f32": {"status": "skipped", "note": "needs about 150 s, 90 s left in the budget"},
                "eval": {"status": "ok", "seconds": 40.0, "dtype": "bfloat16", "decoding_threads": 16,
                         "model_alone": [{"batch": 32, "clips_per_s": 2000.0, "median_s": 0.016, "first_call_s": 9.0}],
                         "end_to_end": [{"method": "dense", "tracklets": 192, "clips": 768, "seconds": 1.0,
                                         "clips_per_s": 768.0, "batch": 32}],
                         "mars_test_estimate_s": {"model_alone": 5.7, "end_to_end": 14.7, "clips": 11310}},
                "smoke": {"status": "failed", "seconds": 5.0, "error": "exited 1"},
            }}


def test_acceptance_verdicts_and_figures_of_a_made_up_run():
    report = _made_up_report()
    checks = {c[0].split(" ")[0]: c[1:] for c in gpu_run.acceptance(report)}
    # 256 training frames per step: JAX 2560/s, PyTorch (its rerun alone) 1707/s → 1.50×.
    assert checks["JAX"] == ("1.50×", "PASS")
    assert checks["MFU"] == ("20.0 %", "FAIL")  # 20 TFLOP per step / 0.1 s / 1000 TFLOP/s
    assert checks["compile"] == ("bf16 40.0 s", "PASS")
    assert checks["MARS-size"] == ("12.0 ms", "FAIL")
    assert checks["input"] == ("3000 frames/s (16 threads) vs 2560 needed", "PASS")
    rows = gpu_run.step_rows(report)
    torch_row = next(r for r in rows if r["part"] == "step_bf16_torch_alone")
    assert torch_row["mfu"] == pytest.approx(20e12 / 0.150 / 1000e12)  # XLA's flop count, borrowed from its twin
    table = gpu_run.render(report)
    assert "| step_f32 | skipped | — | needs about 150 s" in table and "| smoke | failed | 5.0 | exited 1 |" in table
    assert "failed: OutOfMemoryError" in table and "NVIDIA H100 80GB HBM3" in table
    assert "- step_bf16: JAX ÷ PyTorch training frames/s 1.50×" in table
    assert "MARS test (11310 one-clip tracklets): about 14.7 s end to end" in table


def test_a_framework_that_ran_out_of_memory_or_a_dead_process_gets_a_rerun_alone():
    both = next(p for p in gpu_run.PARTS if p.name == "step_bf16")
    report = _made_up_report()
    [alone] = gpu_run.reruns(both, "ok", report["parts"]["step_bf16"])
    assert alone.name == "step_bf16_torch_alone"
    assert alone.options == {"dtype": "bfloat16", "frameworks": ["torch"], "devices": 1}  # the twin's setting
    assert [p.name for p in gpu_run.reruns(both, "failed", {})] == ["step_bf16_jax_alone", "step_bf16_torch_alone"]
    assert gpu_run.reruns(both, "killed", {}) == []  # out of time: nothing more to run
    jax_only = next(p for p in gpu_run.PARTS if p.name == "step_bf16_remat")
    assert gpu_run.reruns(jax_only, "failed", {}) == []
    assert gpu_run.base_part("step_bf16_jax_alone") == "step_bf16"


def test_estimates_follow_the_longest_step_part_that_ran():
    f32 = next(p for p in gpu_run.PARTS if p.name == "step_f32")
    assert gpu_run.estimate(f32, False, {}) == f32.estimate_s
    assert gpu_run.estimate(f32, False, {"step_bf16": 400.0, "ranking": 900.0}) == 400.0
    assert gpu_run.estimate(f32, False, {"step_bf16": 400.0}, {"step_f32": 30.0}) == 30.0


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
