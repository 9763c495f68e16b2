"""One prepared GPU measurement: the paper's train step against PyTorch (eager and torch.compile), MFU, memory,
the input pipeline, ranking, the real training loop, evaluation, in one command that keeps to a time budget
(BENCHMARKS.md, "GPU measurement").

On the GPU machine, from the repository root, with the `.whl/` folder of benchmarks/gpu/wheels.sh beside it:

    bash benchmarks/gpu/run.sh            # installs the wheels and the project, then runs this script

Here, on CPU (tiny model, 2 fake devices, every part; tests/test_gpu_benchmark.py runs one part of each kind):

    python benchmarks/gpu/run.py --dry-run --out /tmp/gpu_dry

Parts, in the order they run (PARTS below; the first seven are the plan, whose caps fit the budget; the last two
run only if the plan left time for their caps). Each runs in its own process, so device memory starts empty and a
part that crashes or hangs costs only itself; JAX and PyTorch of one step part share a process and a card:

  env               versions, device, driver and clocks (nvidia-smi), and the card's measured ceilings: a large
                    bf16 and f32 matmul in JAX and PyTorch (the "measured matmul" peak of the second MFU), and a
                    device-to-device copy. Off a dry run, a JAX without its GPU backend or a torch without CUDA
                    fails this part, and the run stops there.
  step_bf16         the paper step (benchmarks/train_step.py: ResNet-50, 256×128, T = 4, 32 source + 32 target
                    clips) in bf16: JAX, PyTorch under torch.compile, and PyTorch eager, in one process; single
                    synchronised steps interleaved, then 10 back to back each.
  input             the grain source + target streams on the host's cores (JPEGs at 256×128), against what
                    the step consumes (training frames/s of step_bf16): is training data-bound?
  ranking           CMC/mAP of a MARS-size problem (1,980 × 9,330) on the device, checked against numpy.
  smoke             `python -m svreid_jax.main --config=configs/demo.py:paper,micro`: the real training loop (input
                    pipeline, orbax checkpoints, evaluation) under the machine's jax, flax and orbax.
  eval              evaluation forward: model alone (clips/s at two batch sizes) and tracklet_features end to
                    end on JPEG tracklets (decode + device), extrapolated to MARS's 11,310 test tracklets.
  step_bf16_b64     tuning: bf16 at 64 + 64 clips (JAX): does the card want a larger batch?
  step_f32          (if time is left) the same step in float32 (TF32), JAX and PyTorch compiled.
  step_bf16_remat   (if time is left) bf16 with model.remat (JAX): time and memory of recomputing the blocks.

FLOPs and MFU: the step's FLOPs are counted analytically from its layer shapes (benchmarks/flops.py: every
convolution and matrix product of the step's jaxpr, forward, backward and the teacher's forward); XLA's own cost
analysis is printed beside it only where it is plausible, as "n/a" otherwise (on GPU it counts cuDNN and cuBLAS
custom calls as −1 or 0). MFU is given against the datasheet's dense peak (train_step.PEAK_FLOPS) and against the
env part's measured matmul rate.

Budget: `--deadline` (seconds since the epoch; run.sh passes its start + 480 s) or `--budget` seconds from now.
Each part has a cap (seconds, printed with the plan and when the part starts): it starts only if its cap fits in
what is left, and is killed at its cap. A part's process writes its result file and then leaves with os._exit(0)
(a crash while tearing down two CUDA stacks cannot fail it); a result file without an error counts whatever the
exit status. A framework of a step part that ran out of device memory beside the others is rerun alone in a fresh
process (`<part>_<framework>_alone`) if its cap still fits. Missing packages stop the run before any part, with
one line.

Output under --out ($OUT on the device machine): gpu_benchmark.json (every figure, written again after each
part), gpu_benchmark.md (the tables, also printed last), gpu_benchmark.log (each part's own output).
Exit status 0 when no part failed (skipped for time is not failed), 1 when one did, 2 on a failed preflight.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCHMARKS)

# MARS test split: 1,980 query + 9,330 gallery tracklets, one clip each with the reference's eval.temporal.
MARS_QUERY, MARS_GALLERY = 1980, 9330
# Goals (issue 27): JAX's bf16 step against PyTorch compiled on the same card, MFU against the datasheet's dense
# bf16 peak (ResNet-50 training with train-mode BN reaches about 10-17 % in MLPerf-class runs), and an input
# pipeline with headroom over what the step consumes. Compile and ranking: issue 19's.
TARGET_SPEEDUP, TARGET_MFU, TARGET_INPUT_HEADROOM = 1.2, 0.12, 1.5
TARGET_COMPILE_S, TARGET_RANKING_MS = 60.0, 10.0
# The device call (docs/DEVELOPING.md): 15 minutes of device time per session, machine start included; one call
# of at most 10 minutes. run.sh gives this script a deadline 480 s after its own start; the wheels' install and
# the preflight take up to INSTALL_RESERVE_S of that, the report REPORT_RESERVE_S. The plan's caps must fit in
# what remains (tests/test_gpu_benchmark.py checks it).
DEVICE_BUDGET_S, INSTALL_RESERVE_S, REPORT_RESERVE_S = 480.0, 30.0, 5.0
USABLE_S = DEVICE_BUDGET_S - INSTALL_RESERVE_S - REPORT_RESERVE_S


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    kind: str  # env | step | ranking | input | eval | smoke
    cap_s: float  # on the GPU machine: killed after this many seconds (start-up and compilation included)
    dry_cap_s: float  # --dry-run on a 2-core CPU
    options: dict = dataclasses.field(default_factory=dict)
    about: str = ""
    planned: bool = True  # in the plan whose caps fit the budget; False: only if time is left

    def cap(self, dry: bool) -> float:
        return self.dry_cap_s if dry else self.cap_s


TORCH_BOTH = ["jax", "torch_compiled", "torch"]
PARTS = (
    Part("env", "env", 25, 60, {}, "versions, device, measured matmul and copy rates"),
    Part("step_bf16", "step", 180, 600, {"dtype": "bfloat16", "frameworks": TORCH_BOTH},
         "paper step, bf16: JAX, PyTorch compiled, PyTorch eager"),
    Part("input", "input", 35, 90, {}, "host input pipeline vs the step's consumption"),
    Part("ranking", "ranking", 15, 60, {}, "MARS-size CMC/mAP"),
    Part("smoke", "smoke", 70, 400, {}, "the real training loop (main.py micro demo, orbax checkpoints)"),
    Part("eval", "eval", 50, 200, {}, "evaluation feature extraction"),
    Part("step_bf16_b64", "step", 65, 300, {"dtype": "bfloat16", "batch_scale": 2, "frameworks": ["jax"]},
         "tuning: bf16 at twice the paper batch (JAX)"),
    Part("step_f32", "step", 120, 500, {"dtype": "float32", "frameworks": ["jax", "torch_compiled"]},
         "paper step, f32/TF32: JAX, PyTorch compiled", planned=False),
    Part("step_bf16_remat", "step", 60, 300, {"dtype": "bfloat16", "remat": True, "frameworks": ["jax"]},
         "bf16 with model.remat (JAX)", planned=False),
)
PART_NAMES = tuple(p.name for p in PARTS)


# =============================================================================================
# Sizes: the device run and the dry run


def sizes(dry: bool) -> dict:
    """Every problem size the parts use. The device run is the paper's; the dry run exercises the same code on
    sizes a 2-core CPU gets through in seconds."""
    if dry:
        return dict(depth="tiny", model_width=8, height=32, width=16, frames=4, batch=2, steps=2, warmup=1,
                    num_classes=16, eval_batches=(4,), eval_timed=2, ranking=(120, 600, 40, 6, 100), ranking_repeats=3,
                    data=dict(num_identities=8, tracklets_per_identity=4, frames_per_tracklet=8, height=32, width=16),
                    input_threads=(1, 2), input_batches=3, input_pk=(2, 2), input_target=4, matmul_n=256,
                    copy_mib=16, eval_end_to_end_batch=4, back_to_back=2, torch_compile_backend="aot_eager")
    return dict(depth="50", model_width=0, height=256, width=128, frames=4, batch=32, steps=20, warmup=3,
                num_classes=150, eval_batches=(32, 128), eval_timed=10,
                ranking=(MARS_QUERY, MARS_GALLERY, 625, 6, 2300), ranking_repeats=15,
                data=dict(num_identities=48, tracklets_per_identity=4, frames_per_tracklet=16, height=256, width=128),
                input_threads=(2, 8), input_batches=15, input_pk=(8, 4), input_target=32, matmul_n=8192,
                copy_mib=2048, eval_end_to_end_batch=32, back_to_back=10, torch_compile_backend="inductor")


# =============================================================================================
# The parts (each runs in its own process: `run.py --part NAME --result FILE`)


def _setup_imports():
    sys.path.insert(0, ROOT)
    sys.path.insert(0, BENCHMARKS)


def say(*words) -> None:
    """A progress line of a part (the orchestrator prefixes it with the part's name and logs it)."""
    print(*words, flush=True)


def _median_time(fn, repeats: int, sync=lambda out: out) -> tuple[float, float]:
    """(median, min) seconds of `repeats` calls of fn, each synchronised with `sync(out)`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _versions() -> dict:
    from importlib import metadata

    names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt", "flax",
             "optax", "orbax-checkpoint", "grain", "ml-collections", "clu", "simplejpeg", "tensorboardX", "numpy",
             "scipy", "pillow", "torch", "torchvision", "nvidia-cudnn-cu13", "nvidia-cudnn-cu12")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = ("name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,"
             "temperature.gpu,pstate")
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                              text=True, timeout=30)
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"


def part_env(opts: dict, dry: bool) -> dict:
    """Versions, devices and the card's measured ceilings (matmul rates, copy bandwidth)."""
    import jax
    import jax.numpy as jnp

    size = sizes(dry)
    dev = jax.devices()[0]
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "versions": _versions(), "nvidia_smi": _nvidia_smi(), "jax_backend": jax.default_backend(),
           "devices": [str(d) for d in jax.devices()], "device_kind": dev.device_kind,
           "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    stats = dev.memory_stats() or {}
    out["device_memory_bytes"] = stats.get("bytes_limit")
    try:
        out["jax_environment"] = jax.print_environment_info(return_string=True)
    except Exception as e:  # noqa: BLE001
        out["jax_environment"] = f"unavailable: {e}"
    n = size["matmul_n"]
    rates = {}
    for dtype in ("bfloat16", "float32"):
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
        mm = jax.jit(lambda x, y: x @ y)
        jax.block_until_ready(mm(a, b))
        med, _ = _median_time(lambda: mm(a, b), 10, jax.block_until_ready)
        rates[f"jax_matmul_{dtype}"] = 2.0 * n**3 / med
    words = size["copy_mib"] * 2**20 // 4
    x = jnp.arange(words, dtype=jnp.float32)
    bump = jax.jit(lambda v: v + 1.0)  # reads and writes every byte once
    jax.block_until_ready(bump(x))
    med, _ = _median_time(lambda: bump(x), 10, jax.block_until_ready)
    rates["jax_copy_bytes_per_s"] = 2.0 * 4 * words / med
    try:
        import torch
    except ImportError as e:
        out["torch"] = f"not importable: {e}"
    else:
        out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                        "cuda_available": torch.cuda.is_available(),
                        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
        tdev = "cuda" if torch.cuda.is_available() else "cpu"
        for dtype in ("bfloat16", "float32"):
            ta = torch.randn(n, n, device=tdev).to(getattr(torch, dtype))
            tb = torch.randn(n, n, device=tdev).to(getattr(torch, dtype))
            sync = (lambda _: torch.cuda.synchronize()) if tdev == "cuda" else (lambda _: None)
            sync(ta @ tb)
            med, _ = _median_time(lambda: ta @ tb, 10, sync)
            rates[f"torch_matmul_{dtype}"] = 2.0 * n**3 / med
    out["measured"] = rates
    out["matmul_n"] = n
    if not dry:
        # A JAX that fell back to its CPU backend (a CUDA plugin that failed to load only warns) or a torch without
        # CUDA would measure the wrong machine for the next 7 minutes: stop here instead.
        if jax.default_backend() == "cpu":
            raise RuntimeError("JAX runs on its CPU backend: the CUDA plugin did not load (see jax_environment)")
        if opts.get("torch_required") and not (isinstance(out.get("torch"), dict) and out["torch"]["cuda_available"]):
            raise RuntimeError(f"torch cannot use the GPU: {out.get('torch')}")
    say(f"{out['device_kind']} × {len(out['devices'])}; " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()))
    say("measured: " + ", ".join(f"{k} {v / 1e12:.2f}e12" for k, v in rates.items()))
    return out


def _step_args(opts: dict, dry: bool) -> argparse.Namespace:
    size = sizes(dry)
    return argparse.Namespace(
        batch=size["batch"] * int(opts.get("batch_scale", 1)), depth=size["depth"], model_width=size["model_width"],
        height=size["height"], width=size["width"], frames=size["frames"], dtype=opts.get("dtype", "bfloat16"),
        remat=bool(opts.get("remat", False)), steps=int(opts.get("steps") or size["steps"]),
        warmup=int(opts.get("warmup") or size["warmup"]), num_classes=size["num_classes"], peak_flops=0.0,
        torch=any(f.startswith("torch") for f in opts.get("frameworks", TORCH_BOTH)), torch_device=None,
        torch_contiguous=False, threads=0, back_to_back=size["back_to_back"])


FRAMEWORK_LABELS = {"jax": "JAX", "torch_compiled": "PyTorch compiled", "torch": "PyTorch"}


def part_step(opts: dict, dry: bool) -> dict:
    """The paper step (train_step.JaxRunner) and, in the same process, torch_baseline.Runner on the same batch
    under torch.compile and eagerly."""
    import jax

    import train_step
    from configs import mars
    from svreid_jax import parallel
    from svreid_jax.variants import terms

    args = _step_args(opts, dry)
    size = sizes(dry)
    frameworks = opts.get("frameworks", TORCH_BOTH)
    jax_side = "jax" in frameworks
    # A PyTorch-only rerun leaves JAX's backend alone (its CUDA stack is what it is kept apart from) and takes the
    # device count of the run it repeats, so both time the same global batch.
    devices = jax.device_count() if jax_side else int(opts.get("devices", 1))
    global_batch = args.batch * devices
    host_batch = train_step.make_batch(global_batch, args.frames, args.height, args.width)
    paper_config = mars.get_config()
    paper_config.batch.target_size = args.batch
    paper = paper_config.adaptation
    kmeans_clusters = min(terms.teacher_clusters(paper_config), global_batch)  # as train_step.make_config sets it
    factories = []
    if jax_side:
        factories.append(("JAX", lambda: train_step.JaxRunner(args, host_batch)))
    if args.torch:
        import torch_baseline  # the preflight checked that it imports

        def torch_runner(backend):
            return lambda: torch_baseline.Runner(
                host_batch, num_classes=args.num_classes, depth=args.depth, width=args.model_width or None,
                dtype=args.dtype, kmeans_clusters=kmeans_clusters, kmeans_iters=paper.kmeans_iters,
                tf32=True if args.dtype == "float32" else None, compile=bool(backend),
                compile_backend=backend or "inductor")

        if "torch_compiled" in frameworks:
            factories.append((FRAMEWORK_LABELS["torch_compiled"], torch_runner(size["torch_compile_backend"])))
        if "torch" in frameworks:
            factories.append((FRAMEWORK_LABELS["torch"], torch_runner("")))
    say(f"R{args.depth} {args.dtype}{' remat' if args.remat else ''}, {global_batch}+{global_batch} clips × "
        f"{args.frames} × {args.height}×{args.width} on {devices} device(s): "
        f"{', '.join(label for label, _ in factories)}; {args.warmup} warm-up + {args.steps} timed steps, then "
        f"{args.back_to_back} back to back")
    results = train_step.benchmark(factories, args.warmup, args.steps, tolerate_errors=True,
                                   back_to_back=args.back_to_back)
    for r in results:
        say(f"{r['framework']}: " + (r["error"][:300] if "error" in r else
                                     f"step {1e3 * r['step_s']:.1f} ms median, "
                                     f"{1e3 * r['back_to_back_s']:.1f} ms back to back, first "
                                     f"{r['first_step_s']:.2f} s, "
                                     + (f"compile {r['compile_s']:.1f} s" if r.get("compile_s") else "eager")
                                     + f", peak {r['peak_bytes']} bytes, host syncs {r.get('host_syncs')}"))
    out = {"setting": {"dtype": args.dtype, "remat": args.remat, "depth": args.depth, "height": args.height,
                       "width": args.width, "frames": args.frames, "clips_per_domain": global_batch,
                       "devices": devices, "steps": args.steps, "warmup": args.warmup,
                       "back_to_back": args.back_to_back, "kmeans_clusters": kmeans_clusters},
           "training_frames_per_step": 2 * global_batch * args.frames,
           "all_frames_per_step": 3 * global_batch * args.frames, "results": results, "notes": []}
    if jax_side:
        # What the host→device copy of one batch costs (uint8 source + target clips), next to the step.
        mesh = parallel.data_mesh()
        med, best = _median_time(lambda: parallel.shard_batch(host_batch, mesh), 5, jax.block_until_ready)
        out["host_to_device_s"] = {"median": med, "min": best,
                                   "bytes": int(sum(x.nbytes for x in jax.tree.leaves(host_batch)))}
        peak, source = train_step.datasheet_peak(args)
    elif "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        peak, source = train_step.spec_peak(sys.modules["torch"].cuda.get_device_name(0), args.dtype)
    else:
        peak, source = None, "no datasheet figure for a CPU"
    out["peak_flops"], out["peak_source"] = peak, source
    return out


def _jpeg_dataset(dry: bool, data_dir: str):
    """Photo-like JPEG tracklets (benchmarks/input_pipeline.make_dataset), made once per run under data_dir and
    reused by the parts after the first (each is its own process)."""
    import input_pipeline
    from svreid_jax.data.records import Tracklet

    spec = sizes(dry)["data"]
    index = os.path.join(data_dir, "tracklets.json")
    if not os.path.exists(index):
        root = os.path.join(data_dir, "frames")
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        tracklets, mean_bytes = input_pipeline.make_dataset(root, **spec)
        with open(index + ".tmp", "w") as f:
            json.dump({"mean_jpeg_bytes": mean_bytes, "seconds_to_make": time.perf_counter() - start,
                       "tracklets": [[list(t.frames), t.pid, t.camid] for t in tracklets]}, f)
        os.replace(index + ".tmp", index)
    with open(index) as f:
        saved = json.load(f)
    tracklets = tuple(Tracklet(tuple(frames), pid, camid) for frames, pid, camid in saved["tracklets"])
    return tracklets, {k: v for k, v in saved.items() if k != "tracklets"} | {"tracklets": len(tracklets), **spec}


def _mark_absl_parsed():
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads absl flags; this process has none of its own
        flags.FLAGS.mark_as_parsed()


def part_input(opts: dict, dry: bool, data_dir: str) -> dict:
    """Source (P×K) and target streams read together, as the training loop does, at several thread counts."""
    _mark_absl_parsed()
    from svreid_jax.data import pipeline

    size = sizes(dry)
    tracklets, data = _jpeg_dataset(dry, data_dir)
    (p, k), target = size["input_pk"], size["input_target"]
    spec = pipeline.ClipSpec(seq_len=size["frames"], height=data["height"], width=data["width"])
    rows = []
    for threads in size["input_threads"]:
        # grain decodes min(threads, prefetch) batches at a time (its prefetch buffer holds the submitted ones), so
        # the buffer is twice the threads: every thread busy, and one batch ready behind each.
        prefetch = 2 * threads
        src, _ = pipeline.source_stream(tracklets, num_identities=p, num_instances=k, spec=spec, seed=0,
                                        num_threads=threads, prefetch=prefetch)
        tgt = pipeline.target_stream(tracklets, batch_size=target, spec=spec, seed=0, num_threads=threads,
                                     prefetch=prefetch)
        for _ in range(3):
            next(src), next(tgt)
        cpu, start = time.process_time(), time.perf_counter()
        frames = 0
        for _ in range(size["input_batches"]):
            for batch in (next(src), next(tgt)):
                frames += batch["video"].shape[0] * batch["video"].shape[1]
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        in_flight = min(threads, prefetch)
        rows.append({"threads_per_stream": threads, "total_threads": 2 * threads, "prefetch": prefetch,
                     "in_flight_per_stream": in_flight, "frames": frames, "seconds": wall,
                     "frames_per_s": frames / wall, "frames_per_cpu_s": frames / max(cpu, 1e-9)})
        say(f"{threads} + {threads} threads, prefetch {prefetch}, {in_flight} + {in_flight} batches decoding: "
            f"{frames / wall:.0f} frames/s")
        del src, tgt
    return {"data": data, "decoder": spec.decoder, "batch": {"source": p * k, "target": target},
            "frames_per_step": (p * k + target) * size["frames"], "rows": rows}


def part_ranking(opts: dict, dry: bool) -> dict:
    """evaluate_ranking on a MARS-size problem with the distances on the device; checked against numpy once."""
    import jax
    import numpy as np

    import ranking as ranking_benchmark  # benchmarks/ranking.py: the problem generator and the numpy reference
    from svreid_jax.evaluation import ranking

    size = sizes(dry)
    nq, ng, ids, cams, distractors = size["ranking"]
    q, g, labels = ranking_benchmark.mars_like_problem(nq, ng, ids, cams, distractors, 256, 2.0, 0)
    start = time.perf_counter()
    distmat = jax.block_until_ready(ranking.pairwise_distance(q, g, "cosine"))
    dist_first = time.perf_counter() - start
    dist_med, _ = _median_time(lambda: ranking.pairwise_distance(q, g, "cosine"), 5, jax.block_until_ready)
    start = time.perf_counter()
    res = ranking.evaluate_ranking(distmat, *labels, max_rank=50)
    first = time.perf_counter() - start
    med, best = _median_time(lambda: ranking.evaluate_ranking(distmat, *labels, max_rank=50), size["ranking_repeats"])
    say(f"{nq} × {ng}: {1e3 * med:.2f} ms median, first call {first:.2f} s")
    cmc_ref, map_ref = ranking_benchmark.numpy_reference(np.asarray(distmat), *labels, 50)
    return {"problem": {"queries": int(distmat.shape[0]), "gallery": int(distmat.shape[1]), "ids": ids,
                        "cameras": cams, "distractors": distractors},
            "ranking_s": {"median": med, "min": best, "first_call": first, "repeats": size["ranking_repeats"]},
            "distance_s": {"median": dist_med, "first_call": dist_first},
            "rank1": float(res.cmc[0]), "mAP": float(res.mAP),
            "max_abs_diff_vs_numpy": {"mAP": abs(float(res.mAP) - map_ref),
                                      "cmc": float(np.abs(res.cmc - cmc_ref).max())}}


def part_eval(opts: dict, dry: bool, data_dir: str) -> dict:
    """The eval forward alone (random clips already on the device) and tracklet_features end to end on JPEGs."""
    _mark_absl_parsed()
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import train_step
    from svreid_jax import builders, parallel
    from svreid_jax.evaluation import features
    from svreid_jax.models import reid

    size = sizes(dry)
    args = _step_args({"dtype": "bfloat16"}, dry)
    config = train_step.make_config(args)
    config.data.num_threads = os.cpu_count() or 2
    model = builders.create_model(config, size["num_classes"])
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0),
                                          (1, config.eval.seq_len, config.data.height, config.data.width, 3))
    mesh = parallel.data_mesh()
    variables = parallel.replicate({"params": params, "batch_stats": batch_stats}, mesh)
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    embed = jax.jit(features.make_embed_step(model), in_shardings=(replicated, data_sharding),
                    out_shardings=replicated)
    rng = np.random.default_rng(0)
    model_rows = []
    for batch in size["eval_batches"]:
        video = jax.device_put(rng.integers(0, 256, (batch, config.eval.seq_len, config.data.height,
                                                     config.data.width, 3), dtype=np.uint8), data_sharding)
        start = time.perf_counter()
        jax.block_until_ready(embed(variables, video))
        first = time.perf_counter() - start
        med, best = _median_time(lambda: embed(variables, video), size["eval_timed"], jax.block_until_ready)
        model_rows.append({"batch": batch, "first_call_s": first, "median_s": med, "min_s": best,
                           "clips_per_s": batch / med})
        say(f"model alone, batch {batch}: {batch / med:.0f} clips/s (first call {first:.1f} s)")
    tracklets, data = _jpeg_dataset(dry, data_dir)
    end_to_end = []
    for method in ("restricted_begin", "dense"):
        config.eval.temporal = method
        config.eval.batch_size = size["eval_end_to_end_batch"]
        features.tracklet_features(config, model, variables, tracklets, mesh)  # compiles; warms the page cache
        start = time.perf_counter()
        feats = features.tracklet_features(config, model, variables, tracklets, mesh)
        wall = time.perf_counter() - start
        clips = (len(tracklets) if method == "restricted_begin"
                 else sum(-(-len(t) // config.eval.seq_len) for t in tracklets))
        end_to_end.append({"method": method, "tracklets": len(tracklets), "clips": clips, "seconds": wall,
                           "clips_per_s": clips / wall, "batch": config.eval.batch_size,
                           "finite": bool(np.isfinite(feats).all())})
        say(f"tracklet_features, {method}: {clips / wall:.0f} clips/s")
    best_model = max(r["clips_per_s"] for r in model_rows)
    e2e = max(end_to_end, key=lambda r: r["clips"])["clips_per_s"]  # the longer run: the same work per clip
    mars_clips = MARS_QUERY + MARS_GALLERY
    return {"dtype": config.model.dtype, "decoding_threads": config.data.num_threads, "model_alone": model_rows,
            "end_to_end": end_to_end, "data": data,
            "mars_test_estimate_s": {"model_alone": mars_clips / best_model, "end_to_end": mars_clips / e2e,
                                     "clips": mars_clips}}


def part_smoke(opts: dict, dry: bool, data_dir: str) -> dict:
    """The command line on the micro demo (train, checkpoint, evaluate) under this machine's jax."""
    workdir = tempfile.mkdtemp(prefix="svreid_smoke_", dir=data_dir)
    cmd = [sys.executable, "-m", "svreid_jax.main", "--config=configs/demo.py:paper,micro", f"--workdir={workdir}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=opts.get("timeout_s", 600))
    took = time.perf_counter() - start
    sys.stdout.write(done.stdout[-4000:])
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    from svreid_jax import builders

    # The loop's orbax checkpoints, as the resume path reads them: a loop that trained but saved nothing fails.
    steps = builders.saved_steps(os.path.join(workdir, "checkpoints"))
    if not steps:
        raise RuntimeError(f"no orbax checkpoint under {workdir}/checkpoints after the run")
    shutil.rmtree(workdir, ignore_errors=True)
    return {"command": " ".join(cmd), "command_s": took, "checkpoint_steps": steps,
            "results": {k: v for k, v in results.items() if isinstance(v, (int, float))}}


def run_part(name: str, opts: dict, dry: bool, data_dir: str) -> dict:
    _setup_imports()
    kind = next(p.kind for p in PARTS if p.name == name) if name in PART_NAMES else opts["kind"]
    if kind == "env":
        return part_env(opts, dry)
    if kind == "step":
        return part_step(opts, dry)
    if kind == "ranking":
        return part_ranking(opts, dry)
    if kind == "input":
        return part_input(opts, dry, data_dir)
    if kind == "eval":
        return part_eval(opts, dry, data_dir)
    if kind == "smoke":
        return part_smoke(opts, dry, data_dir)
    raise ValueError(f"unknown part kind {kind!r}")


# =============================================================================================
# The orchestrator


def part_environment(dry: bool) -> dict:
    """Environment of every part's process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # JAX and PyTorch share the card in a step part: JAX must not take 75 % of it up front.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if dry:
        # As tests/conftest.py does: init and compilation are 2-3x faster on CPU with the older threefry.
        env["JAX_THREEFRY_PARTITIONABLE"] = "0"
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def part_cap(part: Part, dry: bool, overrides: dict | None = None) -> float:
    """Seconds a part may run: --cap's figure, else its own (the dry run's on a dry run)."""
    if overrides and part.name in overrides:
        return overrides[part.name]
    return part.cap(dry)


def plan_text(parts: list[Part], dry: bool, overrides: dict | None, budget_s: float) -> str:
    """The plan as printed before the first part: every part in order with its cap."""
    planned = [p for p in parts if p.planned]
    extra = [p for p in parts if not p.planned]
    words = ", ".join(f"{p.name} {part_cap(p, dry, overrides):.0f} s" for p in planned)
    line = (f"== plan ({'dry run' if dry else 'device'}, caps): {words}; together "
            f"{sum(part_cap(p, dry, overrides) for p in planned):.0f} s of {budget_s:.0f} s")
    if extra:
        line += "; then, if their caps fit in what is left: " + ", ".join(
            f"{p.name} {part_cap(p, dry, overrides):.0f} s" for p in extra)
    return line


def _stream(pipe, prefix: str, log, echo: bool):
    for line in iter(pipe.readline, ""):
        log.write(f"{prefix}{line}")
        log.flush()
        if echo:
            sys.stdout.write(f"{prefix}{line}")
            sys.stdout.flush()


def _read_result(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def launch(part: Part, args, timeout: float, log, workdir: str) -> tuple[str, dict, float]:
    """Run one part in a fresh process, killed after `timeout` seconds; (status, result or error, seconds).
    status: ok (a result file without an error, whatever the exit status: the process may crash while tearing
    down its CUDA stacks after writing it) | failed | killed."""
    result = os.path.join(workdir, f"{part.name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part.name, "--result", result,
           "--data-dir", os.path.join(workdir, "data"), "--options", json.dumps(part.options)]
    if args.dry_run:
        cmd.append("--dry-run")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=part_environment(args.dry_run), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    reader = threading.Thread(target=_stream, args=(proc.stdout, f"[{part.name}] ", log, not args.quiet), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        return "killed", {"error": f"killed at its cap after {timeout:.0f} s"}, time.perf_counter() - start
    reader.join(5)
    took = time.perf_counter() - start
    data = _read_result(result)
    status, data = part_outcome(rc, data)
    return status, data, took


def part_outcome(rc: int, data: dict | None) -> tuple[str, dict]:
    """(status, entry) of a part that exited with rc after writing `data` (None: no result file): a result
    without an error is kept whatever rc says."""
    if data is not None and "error" not in data:
        if rc != 0:
            data = {**data, "exit_note": f"exited {rc} after writing its result"}
        return "ok", data
    error = f"exited {rc}"
    if data is not None:  # the part's own account of what went wrong
        error += ": " + str(data.get("error", ""))
    return "failed", {"error": error}


FRAMEWORK_KEYS = {label: key for key, label in FRAMEWORK_LABELS.items()}  # runner labels → --options frameworks


def reruns(part: Part, status: str, data: dict) -> list[Part]:
    """Step parts to run next, each framework alone in its own process: the ones that ran out of device memory
    beside the others, or each of them when the shared process died before writing its result (not when it was
    killed at its cap)."""
    frameworks = part.options.get("frameworks", TORCH_BOTH)
    if part.kind != "step" or len(frameworks) < 2:
        return []
    if status == "failed":
        alone = list(frameworks)
    elif status == "ok":
        alone = [FRAMEWORK_KEYS.get(r["framework"]) for r in data.get("results", []) if "error" in r
                 and any(word in r["error"].lower() for word in ("out of memory", "resource_exhausted"))]
    else:
        alone = []
    devices = data.get("setting", {}).get("devices", 1)
    return [Part(f"{part.name}_{fw}_alone", "step", part.cap_s, part.dry_cap_s,
                 {**part.options, "frameworks": [fw], "devices": devices}, f"{part.about} ({fw} alone)",
                 planned=False)
            for fw in alone if fw]


# The modules each kind of part imports: the preflight imports them all before any part starts.
PREFLIGHT_MODULES = ("numpy", "jax", "flax", "optax", "orbax.checkpoint", "grain", "ml_collections", "clu",
                     "simplejpeg", "tensorboardX", "absl", "svreid_jax.main", "svreid_jax.train",
                     "svreid_jax.evaluation.features", "svreid_jax.data.pipeline")


def needs_torch(parts: list[Part]) -> bool:
    return any(f.startswith("torch") for p in parts if p.kind == "step" for f in p.options.get("frameworks", []))


def preflight(parts: list[Part], dry: bool) -> str | None:
    """Import every module the parts need, in a process like theirs (nothing touches a device): None, or the one
    line that says what is missing."""
    modules = list(PREFLIGHT_MODULES) + (["torch", "torch_baseline"] if needs_torch(parts) else [])
    code = ("import importlib, sys\n"
            f"sys.path[:0] = [{ROOT!r}, {BENCHMARKS!r}]\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        print(f'cannot import {name}: {type(e).__name__}: {e}'.splitlines()[0]); sys.exit(1)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, env=part_environment(dry),
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "importing the parts' modules took over 120 s"
    if done.returncode != 0:
        lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
        return lines[-1] if lines else f"exited {done.returncode}"
    return None


def orchestrate(args) -> int:
    selected = args.parts.split(",") if args.parts else list(PART_NAMES)
    unknown = sorted(set(selected) - set(PART_NAMES))
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; known: {', '.join(PART_NAMES)}")
    queue = [p for p in PARTS if p.name in selected]
    if args.no_torch:
        queue = [dataclasses.replace(p, options={**p.options, "frameworks": ["jax"]}) if p.kind == "step" else p
                 for p in queue]
    else:
        queue = [dataclasses.replace(p, options={**p.options, "torch_required": True}) if p.kind == "env" else p
                 for p in queue] if needs_torch(queue) else queue
    problem = preflight(queue, args.dry_run)
    if problem:
        print(f"run.py: preflight failed, nothing measured: {problem}", file=sys.stderr, flush=True)
        return 2
    # --budget counts from here (run.sh's --deadline already covers its install and this preflight).
    wall_start = time.time()
    deadline = args.deadline or wall_start + (args.budget or default_budget(args.dry_run))
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="svreid_gpu_")
    report = {"started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dry_run": args.dry_run, "argv": sys.argv, "budget_s": deadline - wall_start,
              "host": platform.node(), "parts": {}, "order": []}
    plan = plan_text(queue, args.dry_run, args.caps, deadline - wall_start - REPORT_RESERVE_S)
    report["plan"] = plan
    print(plan, flush=True)
    json_path = os.path.join(args.out, "gpu_benchmark.json")
    failed = False
    stop = None
    with open(os.path.join(args.out, "gpu_benchmark.log"), "a") as log:
        while queue:
            part = queue.pop(0)
            left = deadline - time.time() - REPORT_RESERVE_S
            cap = part_cap(part, args.dry_run, args.caps)
            entry = {"about": part.about, "options": part.options, "cap_s": cap, "planned": part.planned}
            if stop:
                entry.update(status="not run", note=stop)
            elif left < cap:
                entry.update(status="skipped", note=f"cap {cap:.0f} s, {max(left, 0):.0f} s left in the budget")
                print(f"== {part.name}: skipped ({entry['note']})", flush=True)
            else:
                print(f"== {part.name} (cap {cap:.0f} s, {left:.0f} s left): {part.about}", flush=True)
                status, data, took = launch(part, args, cap, log, workdir)
                entry.update(data)
                entry.update(status=status, seconds=took)
                failed |= status != "ok"
                print(f"== {part.name}: {status} in {took:.1f} s" + (f" ({data['exit_note']})" if data.get("exit_note")
                                                                      else ""), flush=True)
                queue[:0] = reruns(part, status, data)
                if part.kind == "env" and status != "ok" and not args.dry_run:
                    stop = f"env failed: {str(data.get('error', ''))[:200]}"
                    print(f"== stopping: {stop}", flush=True)
            report["parts"][part.name] = entry
            report["order"].append(part.name)
            report["elapsed_s"] = time.time() - wall_start
            _write_json(json_path, report)
    try:
        text = render(report)
    except Exception:  # noqa: BLE001  a bug in the tables must not cost the figures (already in the JSON)
        text = "rendering the tables failed; the figures are in gpu_benchmark.json\n" + traceback.format_exc()
        failed = True
    report["table"] = text
    _write_json(json_path, report)
    with open(os.path.join(args.out, "gpu_benchmark.md"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed or stop else 0


def _write_json(path: str, data) -> None:
    """Whole or not at all: a reader (or a kill) never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def default_budget(dry: bool) -> float:
    """--budget's default: the device run's usable seconds, or on a dry run every part's dry cap."""
    if dry:
        return sum(p.dry_cap_s for p in PARTS) + REPORT_RESERVE_S
    return USABLE_S + REPORT_RESERVE_S


# =============================================================================================
# Report


def fmt_flops(x: float) -> str:
    """A FLOP count in TFLOP or GFLOP, never in exponent notation."""
    return f"{x / 1e12:.3f} TFLOP" if abs(x) >= 1e11 else f"{x / 1e9:.4g} GFLOP"


def _fmt_bytes(x) -> str:
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def _fmt_rate(x, unit="TFLOP/s", scale=1e12) -> str:
    if not x:
        return "n/a"
    if unit == "TFLOP/s" and x < 1e11:  # a CPU's rates (dry run)
        return f"{x / 1e9:.1f} GFLOP/s"
    return f"{x / scale:.1f} {unit}"


def framework_kind(framework: str) -> str:
    """'jax', 'torch_compiled' or 'torch' from a runner's name or label."""
    if framework.startswith("JAX"):
        return "jax"
    return "torch_compiled" if ("torch.compile" in framework or "compiled" in framework) else "torch"


def measured_peak(report: dict, dtype: str) -> float | None:
    """The env part's best measured matmul rate in dtype (JAX or PyTorch), the second MFU's peak."""
    env = report["parts"].get("env", {})
    if env.get("status") != "ok":
        return None
    rates = [env["measured"].get(f"{fw}_matmul_{dtype}") for fw in ("jax", "torch")]
    return max((r for r in rates if r), default=None)


def _jax_result(report: dict, name: str) -> dict | None:
    """The JAX result of a step part, or of the part a rerun repeats (a PyTorch-only rerun has none)."""
    for part in (name, base_part(name)):
        entry = report["parts"].get(part, {})
        for r in entry.get("results", []):
            if "error" not in r and r["framework"].startswith("JAX"):
                return r
    return None


def step_rows(report: dict) -> list[dict]:
    """One row per (step part, framework) that ran: the figures of the step table and the goals.

    FLOPs per step are the analytical count (benchmarks/flops.py): a JAX row's own per-device share, a PyTorch
    row the whole global step (one device). MFU against the datasheet peak and against the measured matmul."""
    rows = []
    for name, entry in report["parts"].items():
        if not name.startswith("step_") or entry.get("status") != "ok":
            continue
        setting = entry["setting"]
        jx = _jax_result(report, name)
        measured = measured_peak(report, setting["dtype"])
        for r in entry["results"]:
            kind = framework_kind(r["framework"])
            row = {"part": name, "setting": setting, "framework": r["framework"], "kind": kind,
                   "error": r.get("error")}
            if "error" not in r:
                step = r["step_s"]
                flops = (r.get("flops") if kind == "jax" else (jx or {}).get("step_flops"))
                row.update(step_s=step, min_s=min(r["step_times_s"]), first_step_s=r["first_step_s"],
                           back_to_back_s=r.get("back_to_back_s"),
                           training_fps=entry["training_frames_per_step"] / step,
                           all_fps=entry["all_frames_per_step"] / step, compile_s=r.get("compile_s"),
                           init_s=r.get("init_s"), peak_bytes=r.get("peak_bytes"), mem_source=r.get("mem_source"),
                           host_syncs=r.get("host_syncs"), flops=flops,
                           mfu=(flops / step / entry["peak_flops"]) if flops and entry.get("peak_flops") else None,
                           mfu_measured=(flops / step / measured) if flops and measured else None)
            rows.append(row)
    return rows


def base_part(name: str) -> str:
    """step_bf16_torch_compiled_alone → step_bf16 (a rerun's part)."""
    for key in FRAMEWORK_LABELS:
        suffix = f"_{key}_alone"
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _is_jax(framework: str) -> bool:
    return framework.startswith("JAX")


def acceptance(report: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for the goals written into this harness; '—' where the part did not run."""
    rows = step_rows(report)
    ok = lambda cond: "PASS" if cond else "FAIL"  # noqa: E731
    checks = []
    bf16 = {}
    for r in rows:
        if base_part(r["part"]) == "step_bf16" and r.get("step_s"):
            bf16[r["kind"]] = r
    goal = f"JAX ≥ {TARGET_SPEEDUP}× PyTorch compiled, training frames/s, bf16, paper batch, same card"
    if "jax" in bf16 and "torch_compiled" in bf16:
        ratio = bf16["jax"]["training_fps"] / bf16["torch_compiled"]["training_fps"]
        eager = (f"; {bf16['jax']['training_fps'] / bf16['torch']['training_fps']:.2f}× eager"
                 if "torch" in bf16 else "")
        checks.append((goal, f"{ratio:.2f}×{eager}", ok(ratio >= TARGET_SPEEDUP)))
    else:
        checks.append((goal, "—", "not measured"))
    goal = f"MFU ≥ {100 * TARGET_MFU:.0f} % of the datasheet's dense bf16 peak (JAX, bf16 step)"
    if "jax" in bf16 and bf16["jax"].get("mfu") is not None:
        value = bf16["jax"]["mfu"]
        also = (f" ({100 * bf16['jax']['mfu_measured']:.1f} % of the measured matmul)"
                if bf16["jax"].get("mfu_measured") else "")
        checks.append((goal, f"{100 * value:.1f} %{also}", ok(value >= TARGET_MFU)))
    else:
        checks.append((goal, "— (no datasheet peak for this device)" if "jax" in bf16 else "—", "not measured"))
    inp = report["parts"].get("input", {})
    goal = f"input pipeline ≥ {TARGET_INPUT_HEADROOM}× the bf16 step's training frames/s (JAX)"
    if inp.get("status") == "ok" and "jax" in bf16:
        best = max(inp["rows"], key=lambda r: r["frames_per_s"])
        need = bf16["jax"]["training_fps"]
        checks.append((goal, f"{best['frames_per_s']:.0f} frames/s ({best['total_threads']} threads) = "
                             f"{best['frames_per_s'] / need:.2f}× {need:.0f}",
                       ok(best["frames_per_s"] >= TARGET_INPUT_HEADROOM * need)))
    else:
        checks.append((goal, "—", "not measured"))
    compiles = [(r["part"], r["compile_s"]) for r in rows if _is_jax(r["framework"]) and r.get("compile_s")]
    if compiles:
        worst = max(c for _, c in compiles)
        checks.append((f"compile ≤ {TARGET_COMPILE_S:.0f} s (JAX step, lower + compile, every setting; issue 19)",
                       ", ".join(f"{p[5:]} {c:.1f} s" for p, c in compiles), ok(worst <= TARGET_COMPILE_S)))
    else:
        checks.append((f"compile ≤ {TARGET_COMPILE_S:.0f} s (issue 19)", "—", "not measured"))
    ranking = report["parts"].get("ranking", {})
    if ranking.get("status") == "ok":
        ms = 1e3 * ranking["ranking_s"]["median"]
        checks.append((f"MARS-size ranking ≤ {TARGET_RANKING_MS:.0f} ms ({ranking['problem']['queries']} × "
                       f"{ranking['problem']['gallery']}; issue 19)", f"{ms:.1f} ms", ok(ms <= TARGET_RANKING_MS)))
    else:
        checks.append((f"MARS-size ranking ≤ {TARGET_RANKING_MS:.0f} ms (issue 19)", "—", "not measured"))
    return checks


def render(report: dict) -> str:
    parts = report["parts"]
    lines = [f"# GPU measurement{' (DRY RUN on CPU: the figures mean nothing)' if report['dry_run'] else ''}", ""]
    env = parts.get("env", {})
    if env.get("status") == "ok":
        v = env["versions"]
        torch_info = env.get("torch")
        lines.append(f"- device: {env['device_kind']} × {len(env['devices'])} ({env['jax_backend']}), "
                     f"{_fmt_bytes(env.get('device_memory_bytes'))} for JAX; {env['cpu_count']} CPUs; "
                     f"python {env['python']}; started {report['started_utc']}")
        lines.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        if isinstance(torch_info, dict):
            lines.append(f"- torch: CUDA {torch_info['cuda']}, cuDNN {torch_info['cudnn']}, {torch_info['device']}")
        if env.get("nvidia_smi"):
            lines.append("- nvidia-smi: " + " / ".join(env["nvidia_smi"].splitlines()))
        m = env["measured"]
        lines.append(f"- measured ceilings ({env['matmul_n']}³ matmul, median of 10): JAX bf16 "
                     f"{_fmt_rate(m.get('jax_matmul_bfloat16'))}, f32 {_fmt_rate(m.get('jax_matmul_float32'))}; "
                     f"PyTorch bf16 {_fmt_rate(m.get('torch_matmul_bfloat16'))}, f32 "
                     f"{_fmt_rate(m.get('torch_matmul_float32'))} (PyTorch's default: no TF32 in matmuls; JAX's f32 is "
                     f"TF32 on recent GPUs); copy {_fmt_rate(m.get('jax_copy_bytes_per_s'), 'GB/s', 1e9)} "
                     "(read + write)")
    lines += ["", "## Train step (paper variant, same batch, same process)", "",
              "| setting | framework | step median (min), synchronised | back to back, per step | training frames/s "
              "| all frames/s | compile | first step | MFU (datasheet) | MFU (measured matmul) | host syncs/step "
              "| peak device memory |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in step_rows(report):
        s = r["setting"]
        label = (f"{r['part'][5:]}: R{s['depth']} {s['dtype']}{' remat' if s['remat'] else ''}, "
                 f"{s['clips_per_domain']}+{s['clips_per_domain']} clips × {s['frames']} × "
                 f"{s['height']}×{s['width']}")
        if r.get("error"):
            lines.append(f"| {label} | {r['framework']} | failed: {r['error'][:160]} | | | | | | | | | |")
            continue
        compile_txt = "eager" if r["compile_s"] is None else f"{r['compile_s']:.1f} s"
        pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"  # noqa: E731
        b2b = "n/a" if r.get("back_to_back_s") is None else f"{1e3 * r['back_to_back_s']:.1f} ms"
        syncs = "n/a" if r.get("host_syncs") is None else str(r["host_syncs"])
        lines.append(f"| {label} | {r['framework']} | {1e3 * r['step_s']:.1f} ms ({1e3 * r['min_s']:.1f}) | {b2b} | "
                     f"{r['training_fps']:.0f} | {r['all_fps']:.0f} | {compile_txt} | {r['first_step_s']:.2f} s | "
                     f"{pct(r['mfu'])} | {pct(r['mfu_measured'])} | {syncs} | {_fmt_bytes(r['peak_bytes'])} |")
    by_base: dict[str, dict] = {}
    for r in step_rows(report):
        if r.get("step_s"):
            by_base.setdefault(base_part(r["part"]), {})[r["kind"]] = r
    for name, entry in parts.items():
        if name.startswith("step_") and entry.get("status") == "ok":
            dtype = entry["setting"]["dtype"]
            extra = [f"peaks: datasheet {_fmt_rate(entry.get('peak_flops'))} ({entry.get('peak_source')}), "
                     f"measured {dtype} matmul {_fmt_rate(measured_peak(report, dtype))} (env part)"]
            jx = _jax_result(report, name)
            if jx and jx.get("analytic_flops"):
                a = jx["analytic_flops"]
                xla = jx.get("xla_flops")
                xla_txt = (f"{fmt_flops(xla)} per device, {xla / jx['flops']:.3f}× the analytical"
                           if jx.get("xla_flops_plausible") else f"n/a (reported {xla}: not plausible)")
                extra.append(f"FLOPs per step (analytical, benchmarks/flops.py) {fmt_flops(a['total'])} = "
                             f"student forwards {fmt_flops(a['student_forward'])} + teacher forward "
                             f"{fmt_flops(a['teacher_forward'])} + backward {fmt_flops(a['backward'])} + losses "
                             f"{fmt_flops(a['rest'])}; XLA's cost analysis: {xla_txt}")
            pair = by_base.get(name, {})
            for kind, what in (("torch_compiled", "PyTorch compiled"), ("torch", "PyTorch eager")):
                if "jax" in pair and kind in pair:
                    extra.append(f"JAX ÷ {what} training frames/s "
                                 f"{pair['jax']['training_fps'] / pair[kind]['training_fps']:.2f}×")
            if "host_to_device_s" in entry:
                h = entry["host_to_device_s"]
                extra.append(f"host→device copy of one batch ({h['bytes'] / 2**20:.0f} MiB) "
                             f"{1e3 * h['median']:.1f} ms")
            extra += entry.get("notes", [])
            lines.append(f"- {name}: " + "; ".join(extra))
    ev = parts.get("eval", {})
    if ev.get("status") == "ok":
        lines += ["", f"## Evaluation forward ({ev['dtype']})", "", "| what | batch | clips/s | median | first call |",
                  "|---|---|---|---|---|"]
        for r in ev["model_alone"]:
            lines.append(f"| model alone (clips on device) | {r['batch']} | {r['clips_per_s']:.0f} | "
                         f"{1e3 * r['median_s']:.1f} ms | {r['first_call_s']:.1f} s |")
        for r in ev["end_to_end"]:
            lines.append(f"| tracklet_features, {r['method']}, {r['tracklets']} tracklets, {r['clips']} clips, "
                         f"{ev['decoding_threads']} decoding threads | {r['batch']} | {r['clips_per_s']:.0f} | "
                         f"{r['seconds']:.2f} s | |")
        est = ev["mars_test_estimate_s"]
        lines.append(f"- MARS test ({est['clips']} one-clip tracklets): about {est['end_to_end']:.1f} s end to end, "
                     f"{est['model_alone']:.1f} s of device time")
    rk = parts.get("ranking", {})
    if rk.get("status") == "ok":
        pr, t = rk["problem"], rk["ranking_s"]
        lines += ["", "## Ranking", "",
                  f"- {pr['queries']} × {pr['gallery']}: evaluate_ranking {1e3 * t['median']:.1f} ms median "
                  f"(min {1e3 * t['min']:.1f}, first call {t['first_call']:.2f} s); cosine distances "
                  f"{1e3 * rk['distance_s']['median']:.1f} ms; R-1 {100 * rk['rank1']:.2f} %, "
                  f"mAP {100 * rk['mAP']:.2f} %; "
                  f"vs numpy |ΔmAP| {rk['max_abs_diff_vs_numpy']['mAP']:.1e}, max |ΔCMC| "
                  f"{rk['max_abs_diff_vs_numpy']['cmc']:.1e}"]
    inp = parts.get("input", {})
    if inp.get("status") == "ok":
        d = inp["data"]
        lines += ["", "## Input pipeline (host)", "",
                  f"{d['tracklets']} tracklets of {d['frames_per_tracklet']} JPEGs at {d['height']}×{d['width']} "
                  f"(mean {d['mean_jpeg_bytes'] / 1024:.1f} KiB, in the page cache), decoder {inp['decoder']}, "
                  f"source {inp['batch']['source']} + target {inp['batch']['target']} clips per step "
                  f"({inp['frames_per_step']} frames)", "",
                  "| threads (source + target) | prefetch per stream | batches decoding at once | frames/s "
                  "| frames per CPU-second | steps/s it can feed |",
                  "|---|---|---|---|---|---|"]
        for r in inp["rows"]:
            lines.append(f"| {r['threads_per_stream']} + {r['threads_per_stream']} | {r['prefetch']} | "
                         f"{r['in_flight_per_stream']} + {r['in_flight_per_stream']} | {r['frames_per_s']:.0f} | "
                         f"{r['frames_per_cpu_s']:.0f} | {r['frames_per_s'] / inp['frames_per_step']:.1f} |")
    sm = parts.get("smoke", {})
    if sm.get("status") == "ok":
        lines += ["", f"- smoke: `{sm['command']}` ran in {sm['command_s']:.0f} s, orbax checkpoints at steps "
                  f"{sm.get('checkpoint_steps')}; "
                  + ", ".join(f"{k} {sm['results'][k]:.3f}" for k in ("rank1", "mAP") if k in sm["results"])]
    lines += ["", "## Goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {m} | {v} |" for c, m, v in acceptance(report)]
    lines += ["", "## Parts", "", "| part | cap | status | seconds | note |", "|---|---|---|---|---|"]
    for name in report["order"]:
        e = parts[name]
        note = e.get("note") or e.get("error") or e.get("exit_note") or ""
        secs = f"{e['seconds']:.1f}" if "seconds" in e else "—"
        cap = f"{e['cap_s']:.0f} s" if "cap_s" in e else "—"
        lines.append(f"| {name} | {cap}{'' if e.get('planned', True) else ' (if time is left)'} | {e['status']} | "
                     f"{secs} | {str(note)[:200]} |")
    lines.append(f"\nTotal {report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget.")
    return "\n".join(lines)


# =============================================================================================
# Command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu_out"),
                   help="folder for gpu_benchmark.{json,md,log} (default: $OUT, else ./gpu_out)")
    p.add_argument("--budget", type=float, default=0.0,
                   help=f"seconds from now for the whole run (default: {USABLE_S + REPORT_RESERVE_S:.0f} on the "
                        "device; every dry cap on a dry run)")
    p.add_argument("--deadline", type=float, default=0.0, help="absolute end (time.time()); overrides --budget")
    p.add_argument("--parts", default="", help=f"comma-separated subset of: {', '.join(PART_NAMES)}")
    p.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS",
                   help="replace a part's cap (after a first device run showed the real figure)")
    p.add_argument("--no-torch", action="store_true", help="JAX alone in the step parts (no PyTorch rows)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 2 fake devices: checks every part")
    p.add_argument("--quiet", action="store_true", help="do not echo the parts' output (it still goes to the log)")
    # Internal: one part in this process.
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.caps = {k: float(v) for k, v in (e.split("=", 1) for e in args.cap)}
    except ValueError:
        p.error(f"--cap takes PART=SECONDS, got {args.cap}")
    if not args.part:
        return orchestrate(args)
    opts = json.loads(args.options)
    if args.part.endswith("_alone"):
        opts.setdefault("kind", "step")
    os.makedirs(args.data_dir or tempfile.gettempdir(), exist_ok=True)
    try:
        data = run_part(args.part, opts, args.dry_run, args.data_dir or tempfile.mkdtemp())
    except BaseException as e:
        _write_json(args.result, {"error": f"{type(e).__name__}: {e}"[:3000]})
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    _write_json(args.result, data)
    # The result is on disk: leave without running the interpreter's teardown, where a process holding both
    # JAX's and PyTorch's CUDA state can crash (and would mark a measured part failed).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
