"""Is a run bitwise reproducible, and what changes it? Trains the micro demo (configs/demo.py:paper,micro)
for a few steps in a fresh process per setting, without a compilation cache, and compares each run's
final parameters with the first setting's.

  python benchmarks/determinism.py [--epochs=3] [--settings=default,again,avx2]

Settings: default (XLA compiles for this CPU), again (the same a second time), avx2
(XLA_FLAGS=--xla_cpu_max_isa=AVX2: the code XLA would generate for a CPU without AVX-512). Prints one
table row per setting: SHA-256 of the parameters, arrays that differ from the first row, largest
absolute difference.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
from absl import flags  # noqa: E402

from configs import demo  # noqa: E402
from svreid_jax import train  # noqa: E402
from svreid_jax.utils.checkpointing import Checkpointer  # noqa: E402

SETTINGS = {"default": {}, "again": {}, "avx2": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}}


def child(workdir: str, data_root: str, epochs: int) -> None:
    """Train in this process and write the final parameters to workdir/params.npz."""
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    config = demo.get_config("paper,micro")
    config.train.num_epochs = epochs
    config.data.demo_root = data_root
    train.train_and_evaluate(config, workdir)
    _, _, state = Checkpointer(os.path.join(workdir, "checkpoints")).restore_saved()
    np.savez(os.path.join(workdir, "params.npz"), *[np.asarray(x) for x in jax.tree.leaves(state["params"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="micro epochs (2 steps each)")
    parser.add_argument("--settings", default="default,again,avx2", help=f"comma-separated, from {list(SETTINGS)}")
    parser.add_argument("--child", nargs=2, metavar=("WORKDIR", "DATA_ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.epochs)
        return
    base = tempfile.mkdtemp(prefix="svreid_determinism_")
    rows, first = [], None
    for name in args.settings.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
        env.update(SETTINGS[name], JAX_PLATFORMS="cpu")
        workdir = os.path.join(base, name)
        subprocess.run([sys.executable, os.path.abspath(__file__), f"--epochs={args.epochs}", "--child", workdir,
                        os.path.join(base, "data")], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with np.load(os.path.join(workdir, "params.npz")) as f:
            params = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
        digest = hashlib.sha256(b"".join(p.tobytes() for p in params)).hexdigest()[:16]
        first = first or params
        differ = sum(not np.array_equal(a, b) for a, b in zip(first, params))
        largest = max(float(np.max(np.abs(a - b))) for a, b in zip(first, params))
        rows.append(f"| {name} | {SETTINGS[name].get('XLA_FLAGS', '')} | {digest} | {differ} of {len(params)} | "
                    f"{largest:.3g} |")
    shutil.rmtree(base, ignore_errors=True)
    print(f"micro demo, {2 * args.epochs} steps, seed 0; differences against the first row")
    print("| setting | XLA_FLAGS | parameters SHA-256 | arrays that differ | largest abs. difference |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
