"""Benchmark: the full paper-variant train step (svreid_jax.variants.paper), optionally against PyTorch in the same run.

One step = source and target student forwards (ResNet per frame, last stride 1, max pool, temporal mean,
BN-neck, classifier, frame and clip discriminators behind the GRL), a train-mode teacher forward on its own
flip + erasing of the target clips, batch-hard triplet + CE + domain CE + k-means consistency, backward,
Adam-L2 update, EMA teacher update, non-finite guard. Hyper-parameters are configs/mars.py's (the paper's);
the flags below change only sizes and the compute dtype. Random uint8 clips are generated once (seed 0).

    python benchmarks/train_step.py --depth tiny --steps 3             # quick check
    python benchmarks/train_step.py --batch 2 --torch                  # ResNet-50, f32, JAX and PyTorch
    python benchmarks/train_step.py --batch 16 --dtype bfloat16 --torch --torch-compile inductor --steps 20   # a GPU

Reported (a markdown table, then notes): median and min step time over `--steps` timed single steps (each
waited for) after `--warmup` untimed ones, and the time per step of `--back-to-back` steps dispatched without
waiting; frames/s counting source + target + teacher frames, and "training frames" (source + target); process
CPU seconds per step (all threads; on a shared machine this moves much less than wall time for XLA, whereas
PyTorch's OpenMP threads spin while waiting and burn CPU when preempted); compile time (lower + compile; the model
init is reported separately; torch.compile's: its first step less its median step); MFU = the analytical FLOPs
per step (benchmarks/flops.py; XLA's cost analysis is printed beside it, "n/a" where implausible) / step time /
peak, against the datasheet peak and against a measured matmul; host syncs per step; and peak memory: the device allocator's peak where it has one, else the
process's peak RSS over that framework's warm-up (VmHWM is reset after JAX compiles and before PyTorch builds
its model), with a "Δ" column that subtracts the RSS the process already had when that framework's part
began. XLA's own buffer sizes (`compiled.memory_analysis()`) are in the notes.

Order: JAX init + compile + warm-up, then PyTorch build + warm-up, then the timed steps of the two
interleaved (alternating which goes first), so that on a shared machine both see the same load.
`--threads 1` pins the whole process to one CPU, which makes the comparison far less sensitive to other jobs.

Peaks: the datasheet's, `--peak-flops` or the dense spec peak of the device kind (PEAK_FLOPS below, with its
sources; H100/H200 SXM bf16 989.5e12; float32 work against the TF32 tensor-core rate, 494.5e12, because XLA's
default f32 precision and cuDNN use TF32 on those GPUs; PyTorch does so for convolutions by default, for matmuls
only when asked: benchmarks/gpu/run.py asks), none on a CPU; and the measured one: a 2048×2048 matmul in the
run's dtype, timed (XLA, and PyTorch with --torch; at the start and at the end of the run), the best rate kept.

The PyTorch step is benchmarks/torch_baseline.py (same network, losses and optimiser, written from the
spec) on the same uint8 batch (the global batch, on one torch device), eagerly and with --torch-compile also
under torch.compile; its MFU uses the same analytical count (the whole global step).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import mars  # noqa: E402
from svreid_jax import parallel, variants  # noqa: E402
from svreid_jax.variants import terms  # noqa: E402
from svreid_jax.state import create_train_state  # noqa: E402
from svreid_jax.builders import create_model, init_variables  # noqa: E402
import flops as flop_count  # noqa: E402  (benchmarks/flops.py)
from memory import peak_rss_bytes, proc_status, reset_peak_rss  # noqa: E402

# Dense peak flops/s per device (no structured sparsity), keyed by a substring of jax's device_kind and matched in
# this order, so the PCIe/NVL parts come before the plain names (SXM: "NVIDIA H100 80GB HBM3", "NVIDIA H200").
# NVIDIA's datasheets quote the tensor-core rates "with sparsity"; the dense rate is half of that figure.
# Sources: the NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100/: SXM, PCIe and NVL
# columns; BF16 1,979 / 1,513 / 1,671 TFLOPS and TF32 989 / 756 / 835 with sparsity, FP32 67 / 51 / 60), the
# H200 specification table (nvidia.com/en-us/data-center/h200/: SXM as the H100 SXM, NVL as the H100 NVL), the
# A100 datasheet (BF16 312, TF32 156 dense, FP32 19.5). 'float32' is the CUDA cores' FP32 rate; 'tf32' the tensor
# cores' TF32 rate, which XLA (default precision) and cuDNN use for float32 matmuls and convolutions on these GPUs,
# so an f32 step's MFU is taken against it.
PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756.5e12, "tf32": 378e12, "float32": 51e12},
    "H100 NVL": {"bfloat16": 835.5e12, "tf32": 417.5e12, "float32": 60e12},
    "H200 NVL": {"bfloat16": 835.5e12, "tf32": 417.5e12, "float32": 60e12},
    "H100": {"bfloat16": 989.5e12, "tf32": 494.5e12, "float32": 67e12},
    "H200": {"bfloat16": 989.5e12, "tf32": 494.5e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    # TPUs: bf16 only (f32 matmuls run as several bf16 passes; pass --peak-flops for an f32 MFU).
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
}


def spec_peak(device_kind: str, dtype: str) -> tuple[float | None, str]:
    """(dense peak flops/s, what it is) of `dtype` work on a device named `device_kind`, from PEAK_FLOPS.

    float32 work is measured against the TF32 rate where the table has one (see PEAK_FLOPS)."""
    for key, table in PEAK_FLOPS.items():
        if key.lower() in device_kind.lower():
            column = "tf32" if dtype == "float32" and "tf32" in table else dtype
            if column not in table:
                return None, f"no {dtype} peak for {key} in PEAK_FLOPS; pass --peak-flops"
            what = "TF32 tensor cores, XLA's default f32 precision" if column == "tf32" else column
            return table[column], f"spec sheet, {key} dense {what}"
    return None, f"{device_kind!r} is not in PEAK_FLOPS; pass --peak-flops"


# ---------------------------------------------------------------------------------------------
# Helpers


def device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def measured_matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best rate of a jitted n×n matmul in `dtype` (flops/s): the CPU's achieved peak for this run."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def datasheet_peak(args) -> tuple[float | None, str]:
    """The device's dense datasheet peak for the run's dtype (PEAK_FLOPS), or --peak-flops; None on a CPU."""
    if args.peak_flops:
        return args.peak_flops, "--peak-flops"
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None, "no datasheet figure for a CPU"
    return spec_peak(dev.device_kind, args.dtype)


def measured_peak(args, n: int = 2048) -> tuple[float, str]:
    """The best rate of an n² matmul in the run's dtype here: XLA's, and PyTorch's when it runs too."""
    rate, how = measured_matmul_peak(args.dtype, n), "XLA"
    if args.torch:
        import torch_baseline  # noqa: E402

        torch_rate = torch_baseline.matmul_rate(args.dtype, n, device="cuda" if torch_cuda() else "cpu")
        if torch_rate > rate:
            rate, how = torch_rate, "PyTorch (faster than XLA's here)"
    return rate, f"measured: best of 5 {n}² {args.dtype} matmuls, {how}"


def torch_cuda() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_available()


def load_average() -> str:
    try:
        return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def make_batch(batch: int, frames: int, height: int, width: int, seed: int = 0) -> dict:
    """Random uint8 clips; source pids in groups of K = min(4, batch // 2) (P×K), at least 1."""
    rng = np.random.default_rng(seed)
    shape = (batch, frames, height, width, 3)
    k = max(1, min(4, batch // 2))
    return {"source": {"video": rng.integers(0, 256, shape, dtype=np.uint8),
                       "pid": (np.arange(batch) // k).astype(np.int32)},
            "target": {"video": rng.integers(0, 256, shape, dtype=np.uint8)}}


def make_config(args):
    c = mars.get_config()
    c.model.depth = str(args.depth)
    c.model.init_from = "none"  # timing only: random weights, nothing downloaded
    if args.model_width:
        c.model.width = args.model_width
    elif str(args.depth) == "tiny":
        c.model.width = 8  # the preset's width (the config's 64 is for the real ResNets)
    c.model.dtype = args.dtype
    c.model.remat = args.remat
    c.data.height, c.data.width, c.data.seq_len = args.height, args.width, args.frames
    c.batch.target_size = args.batch
    # k-means on the target batch: the label-free rule's count (8 for 32 clips), never more than the batch.
    c.adaptation.kmeans_clusters = min(terms.teacher_clusters(c), args.batch * jax.device_count())
    return c


# ---------------------------------------------------------------------------------------------
# JAX


class JaxRunner:
    """Init the state and compile the step (timed separately), then time single steps.

    Peak memory: the device allocator's peak_bytes_in_use where there is one; otherwise the process's
    peak RSS from the end of compilation to the end of warm-up (VmHWM reset after compiling; the peak up to
    and including compilation is kept separately).
    """

    def __init__(self, args, host_batch: dict):
        config = make_config(args)
        # The analytical count (benchmarks/flops.py) is what MFU divides by; XLA's cost analysis is kept beside it
        # as a check, trusted only where it is plausible (on GPU its convolutions count −1 or 0).
        t0 = time.perf_counter()
        self.analytic = flop_count.paper_step(config, args.num_classes, host_batch)
        self.count_s = time.perf_counter() - t0
        reset_peak_rss()
        self.start_rss = proc_status("VmRSS")
        mesh = parallel.data_mesh()
        model = create_model(config, args.num_classes)
        t0 = time.perf_counter()
        params, batch_stats = init_variables(config, model, jax.random.PRNGKey(0))
        state = create_train_state(config, model.apply, params, batch_stats, jax.random.PRNGKey(1),
                                   steps_per_epoch=1000)
        self.state = parallel.replicate(state, mesh)
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - t0
        del params, batch_stats, state
        self.batch = parallel.shard_batch(host_batch, mesh)

        jitted = parallel.jit_train_step(variants.make_train_step(model, config), mesh, donate=True)
        t0 = time.perf_counter()
        lowered = jitted.lower(self.state, self.batch)
        self.lower_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.compiled = lowered.compile()
        self.xla_compile_s = time.perf_counter() - t0
        # Per device: the step is data-parallel over the mesh, so each device does 1/N of the global count.
        self.flops = self.analytic["total"] / mesh.size
        self.xla_flops = flops_of(self.compiled)  # XLA's count for one device's program
        self.mem = self.compiled.memory_analysis()
        self.compile_peak = peak_rss_bytes()  # init + compile (XLA's own working memory included)
        self.rss_reset = reset_peak_rss()  # the steps' peak is measured on its own
        self.metrics = None
        self.name = f"JAX {jax.__version__} (jit, XLA)"

    def step(self) -> tuple[float, float]:
        """One train step (the state is donated and replaced): (wall seconds, process CPU seconds)."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.state, self.metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - wall, time.process_time() - cpu

    def steps(self, n: int) -> float:
        """n steps dispatched back to back (JAX's dispatch is asynchronous), waited for once: wall seconds."""
        wall = time.perf_counter()
        for _ in range(n):
            self.state, self.metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - wall

    def host_syncs(self) -> tuple[int | None, str]:
        return 0, "one jitted call per step"

    def peak_memory(self) -> tuple[int | None, str]:
        dev_peak = device_peak_bytes()
        if dev_peak is not None:
            return dev_peak, "device peak_bytes_in_use"
        if self.rss_reset:
            return peak_rss_bytes(), "process peak RSS from the end of compilation to the end of warm-up (VmHWM reset)"
        return peak_rss_bytes(), "process max RSS (incl. compilation)"

    def info(self) -> dict:
        m = self.mem
        return {"framework": self.name, "device": str(jax.devices()[0].device_kind), "init_s": self.init_s,
                "lower_s": self.lower_s, "compile_s": self.lower_s + self.xla_compile_s,
                "xla_compile_s": self.xla_compile_s, "flops": self.flops, "xla_flops": self.xla_flops,
                "xla_flops_plausible": flop_count.plausible(self.xla_flops, self.flops),
                "analytic_flops": self.analytic, "step_flops": self.analytic["total"], "count_s": self.count_s, "start_rss_bytes": self.start_rss,
                "compile_peak_rss_bytes": self.compile_peak,
                "metrics": {k: float(v) for k, v in jax.device_get(self.metrics).items()},
                "num_params": int(sum(x.size for x in jax.tree.leaves(self.state.params))),
                "xla_temp_bytes": getattr(m, "temp_size_in_bytes", None) if m else None,
                "xla_argument_bytes": getattr(m, "argument_size_in_bytes", None) if m else None}


def release_device_memory() -> None:
    """Return what a failed runner left behind (its objects are garbage once its exception is handled) to the
    device, so the runners that go on are not starved: PyTorch keeps freed blocks cached until asked."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def benchmark(factories: list, warmup: int, num_steps: int, tolerate_errors: bool = False,
              back_to_back: int = 0) -> list[dict]:
    """Build and warm up each runner in turn (reading its peak memory right after its warm-up, before the
    next one is built), then time `num_steps` single steps of each (each waited for), interleaved and
    alternating which goes first, so that all see the same machine load; then, with back_to_back = n, n steps of
    each dispatched back to back and waited for once (`back_to_back_s`: per step), which lets the host's
    dispatch overlap the device's work as in training; then one more step of each with its host syncs counted.

    factories: callables returning a runner, or (label, callable) pairs. With tolerate_errors, a runner that
    raises while building or warming up (out of device memory, say) becomes {'framework': label, 'error': text}
    in the returned list, in its place, and the others are timed without it.
    """
    runners, warm, peaks, slots = [], [], [], []
    for i, entry in enumerate(factories):
        label, make = entry if isinstance(entry, tuple) else (f"runner {i}", entry)
        try:
            r = make()
            w = [r.step()[0] for _ in range(max(warmup, 1))]
            peak = r.peak_memory()
        except Exception as e:  # noqa: BLE001  (any failure of one framework is reported, not fatal)
            if not tolerate_errors:
                raise
            r = None
            slots.append({"framework": label, "error": f"{type(e).__name__}: {e}"[:3000]})
            release_device_memory()
            continue
        slots.append(len(runners))
        runners.append(r)
        warm.append(w)
        peaks.append(peak)
    timed = [[] for _ in runners]
    for i in range(num_steps):
        order = list(range(len(runners)))
        if i % 2:
            order.reverse()
        for j in order:
            timed[j].append(runners[j].step())
    chained = [r.steps(back_to_back) / back_to_back if back_to_back else None for r in runners]
    syncs = [r.host_syncs() for r in runners]
    results = []
    for r, w, (peak, source), t, b2b, (nsync, sync_how) in zip(runners, warm, peaks, timed, chained, syncs):
        times = [x for x, _ in t]
        info = r.info()
        if getattr(r, "compiled", False) and info.get("compile_s") is None:
            # torch.compile compiles inside the first step: its excess over a later step is the compile time.
            info["compile_s"] = max(w[0] - statistics.median(times), 0.0)
        results.append({**info, "first_step_s": w[0], "warmup_s": w, "step_times_s": times,
                        "cpu_times_s": [c for _, c in t], "step_s": statistics.median(times), "peak_bytes": peak,
                        "mem_source": source, "back_to_back_s": b2b, "back_to_back_steps": back_to_back,
                        "host_syncs": nsync, "host_syncs_how": sync_how})
    return [results[s] if isinstance(s, int) else s for s in slots]


# ---------------------------------------------------------------------------------------------
# Report


def _gib(x):
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def _delta(r):
    if r.get("peak_bytes") is None or r.get("start_rss_bytes") is None or "RSS" not in r["mem_source"]:
        return None
    return r["peak_bytes"] - r["start_rss_bytes"]


def fmt_flops(x: float) -> str:
    """A FLOP count in TFLOP or GFLOP, never in exponent notation."""
    return f"{x / 1e12:.3f} TFLOP" if abs(x) >= 1e11 else f"{x / 1e9:.4g} GFLOP"


def flops_for(result: dict, jax_result: dict | None) -> float | None:
    """FLOPs one device of this runner does per step: JAX's own per-device count; a PyTorch runner does the
    whole global step on its one device (the same network and batch, so the same analytical count)."""
    if result["framework"].startswith("JAX"):
        return result.get("flops")
    return (jax_result or {}).get("step_flops")


def mfu(flops: float | None, step_s: float | None, peak: float | None) -> float | None:
    return flops / step_s / peak if flops and step_s and peak else None


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def xla_count_text(jax_result: dict) -> str:
    """XLA's own count beside the analytical one, or n/a where it is implausible (GPU custom calls)."""
    x, a = jax_result.get("xla_flops"), jax_result.get("flops")
    if jax_result.get("xla_flops_plausible"):
        return f"{fmt_flops(x)} ({x / a:.3f} × the analytical count)"
    return f"n/a (XLA reported {x}; implausible against the analytical {fmt_flops(a)})"


def report(args, results: list[dict], datasheet: tuple, measured: tuple) -> str:
    ndev = jax.device_count()
    b = args.batch * ndev  # global source clips (= target clips)
    all_frames = 3 * b * args.frames  # source + target + teacher
    train_frames = 2 * b * args.frames
    errors = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    if not results:
        return "\n".join(f"- {r['framework']} failed: {r['error']}" for r in errors)
    jx = next((r for r in results if r["framework"].startswith("JAX")), None)
    lines = [
        "| framework | step: median (min) | back to back, per step | frames/s (src+tgt+teacher) | training frames/s "
        "| ratio vs first | CPU s/step | compile | first step | MFU (datasheet) | MFU (measured matmul) "
        "| host syncs/step | peak memory | Δ over part's start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = results[0]["step_s"]
    for r in results:
        f = flops_for(r, jx)
        compile_txt = "none (eager)" if r.get("compile_s") is None else f"{r['compile_s']:.1f} s"
        b2b = "n/a" if r.get("back_to_back_s") is None else f"{r['back_to_back_s']:.3f} s"
        syncs = "n/a" if r.get("host_syncs") is None else str(r["host_syncs"])
        lines.append(
            f"| {r['framework']} | {r['step_s']:.3f} s ({min(r['step_times_s']):.3f} s) | {b2b} | "
            f"{all_frames / r['step_s']:.2f} | "
            f"{train_frames / r['step_s']:.2f} | {base / r['step_s']:.2f}× | "
            f"{statistics.median(r['cpu_times_s']):.2f} s | {compile_txt} | "
            f"{r['first_step_s']:.2f} s | {_pct(mfu(f, r['step_s'], datasheet[0]))} | "
            f"{_pct(mfu(f, r['step_s'], measured[0]))} | {syncs} | {_gib(r['peak_bytes'])} | {_gib(_delta(r))} |")
    notes = [
        "",
        f"- setup: depth {args.depth}, {args.height}×{args.width}, T = {args.frames}, {b} source + {b} target clips "
        f"per step ({ndev} device(s), {args.batch} per device), dtype {args.dtype}, {args.num_classes} classes, "
        f"k-means {make_config(args).adaptation.kmeans_clusters} clusters; CPUs: "
        f"{f'pinned to {args.cpus}' if args.threads else f'all {os.cpu_count()}'}; {args.steps} timed steps after "
        f"{max(args.warmup, 1)} warm-up, then {args.back_to_back} back to back.",
        f"- device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; load average at start {args.load_start}, at end "
        f"{load_average()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"- peaks: datasheet {f'{datasheet[0] / 1e12:.1f} TFLOP/s' if datasheet[0] else 'n/a'} ({datasheet[1]}); measured "
        f"{measured[0] / 1e12:.2f} TFLOP/s ({measured[1]}).",
    ]
    if jx:
        a = jx["analytic_flops"]
        notes += [
            f"- analytical FLOPs per step (benchmarks/flops.py, counted in {jx['count_s']:.1f} s): "
            f"{fmt_flops(a['total'])} = student forwards {fmt_flops(a['student_forward'])} + teacher forward "
            f"{fmt_flops(a['teacher_forward'])} + backward {fmt_flops(a['backward'])} (2 × the student forwards − "
            f"the first convolution's input gradient) + losses {fmt_flops(a['rest'])}; {a['convs']} convolutions, "
            f"{a['dots']} matrix products; per device {fmt_flops(jx['flops'])}. XLA's cost analysis: "
            f"{xla_count_text(jx)}.",
            f"- JAX: init {jx['init_s']:.1f} s (not in compile), lower {jx['lower_s']:.1f} s + compile "
            f"{jx['xla_compile_s']:.1f} s, peak RSS up to the end of compilation {_gib(jx['compile_peak_rss_bytes'])}; "
            f"XLA buffers: temp {_gib(jx['xla_temp_bytes'])}, arguments {_gib(jx['xla_argument_bytes'])}; "
            f"params {jx['num_params'] / 1e6:.2f} M.",
        ]
    notes.append("- timing: each framework built and warmed up in turn, then the single steps interleaved "
                 "(alternating which goes first) so all see the same machine load, then each one's back-to-back "
                 "steps; a torch.compile runner's compile time is its first step less its median step.")
    if any("RSS" in r["mem_source"] for r in results[1:]):
        notes.append("- PyTorch's peak RSS is read in the same process after JAX's part: memory JAX freed stays in "
                     "the process and PyTorch reuses it, so its peak and Δ are not standalone figures "
                     "(`python benchmarks/torch_baseline.py` alone gives one).")
    for r in results:
        notes.append(f"- {r['framework']}: step times {', '.join(f'{t:.3f}' for t in r['step_times_s'])} s "
                     f"(process CPU s: {', '.join(f'{t:.2f}' for t in r['cpu_times_s'])}; warm-up "
                     f"{', '.join(f'{t:.2f}' for t in r['warmup_s'])} s); host syncs: {r.get('host_syncs_how')}; "
                     f"memory = {r['mem_source']} (RSS when its part began: {_gib(r.get('start_rss_bytes'))}); "
                     "loss " + ", ".join(f"{k} {r['metrics'][k]:.4f}" for k in
                                        ("loss", "ce", "triplet", "frame_domain", "clip_domain", "consistency_ce",
                                         "consistency_dist") if k in r["metrics"]))
    notes += [f"- {r['framework']} failed: {r['error']}" for r in errors]
    return "\n".join(lines + notes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="source clips per device (target clips: the same)")
    p.add_argument("--depth", default="50", help="ResNet depth: 18, 34, 50, 101 or 'tiny' (quick check)")
    p.add_argument("--model-width", type=int, default=0, help="base channels (0: the depth's preset)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--frames", type=int, default=4, help="T, frames per clip")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="backbone compute dtype")
    p.add_argument("--remat", action="store_true", help="rematerialise each residual block (model.remat)")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling (at least 1)")
    p.add_argument("--num-classes", type=int, default=150, help="source identities (classifier size)")
    p.add_argument("--peak-flops", type=float, default=0.0, help="peak flops/s per device for MFU (0: default)")
    p.add_argument("--torch", action="store_true", help="also time benchmarks/torch_baseline.py on the same batch")
    p.add_argument("--torch-compile", default="", metavar="BACKEND",
                   help="with --torch, also time the torch.compile'd step with this backend (inductor; aot_eager "
                        "captures the same graphs without generating code, for a quick CPU check)")
    p.add_argument("--back-to-back", type=int, default=10, help="steps timed back to back after the single ones")
    p.add_argument("--torch-device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--torch-contiguous", action="store_true",
                   help="PyTorch in NCHW-contiguous memory format instead of channels_last")
    p.add_argument("--threads", type=int, default=0,
                   help="CPUs per framework (0: all). N > 0 pins the process to N CPUs (sched_setaffinity, "
                        "before XLA starts its threads) and sets torch.set_num_threads(N); 1 is far less "
                        "sensitive to other jobs on a shared machine")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        # Threads started later inherit the affinity; XLA sizes its CPU thread pool when the backend starts,
        # which has not happened yet in this script.
        cpus = sorted(os.sched_getaffinity(0))[:args.threads]
        os.sched_setaffinity(0, cpus)
        args.cpus = cpus
    args.load_start = load_average()

    host_batch = make_batch(args.batch * jax.device_count(), args.frames, args.height, args.width)
    rates = [measured_peak(args)]  # measured now and again at the end, the best is kept
    factories = [("JAX", lambda: JaxRunner(args, host_batch))]
    if args.torch:
        import torch_baseline  # noqa: E402  (imports torch only when asked)

        def torch_runner(compile_backend=""):
            return lambda: torch_baseline.Runner(
                host_batch, num_classes=args.num_classes, depth=args.depth, width=args.model_width or None,
                dtype=args.dtype, device=args.torch_device,
                kmeans_clusters=make_config(args).adaptation.kmeans_clusters,
                kmeans_iters=make_config(args).adaptation.kmeans_iters, channels_last=not args.torch_contiguous,
                num_threads=args.threads or None, compile=bool(compile_backend),
                compile_backend=compile_backend or "inductor")

        if args.torch_compile:
            factories.append(("PyTorch compiled", torch_runner(args.torch_compile)))
        factories.append(("PyTorch", torch_runner()))
    results = benchmark(factories, args.warmup, args.steps, back_to_back=args.back_to_back)
    rates.append(measured_peak(args))
    measured = max(rates, key=lambda x: x[0])
    datasheet = datasheet_peak(args)
    text = report(args, results, datasheet, measured)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "datasheet_peak": datasheet, "measured_peak": measured, "results": results}, f,
                      indent=1, default=str)


if __name__ == "__main__":
    main()
