"""Train the demo config in several variants and seeds and print a results table.

  python benchmarks/demo_ablation.py            # the README's table: 4 variants × 3 seeds
  python benchmarks/demo_ablation.py --variants=source_only,oracle --seeds=0

Each run goes to <workdir>/<variant>_seed<k> (and resumes if it is already there); all variants share
the same generated demo data. Prints a markdown table of target R-1/R-5/mAP (mean ± std over seeds)
and writes it to <workdir>/ablation.md.
"""
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # noqa: E402

flags.DEFINE_list("variants", ["source_only", "frame", "frame_clip", "paper"], "demo variants (configs/demo.py)")
flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds")
flags.DEFINE_string("workdir", "runs/ablation", "where the runs go")
flags.DEFINE_integer("num_epochs", -1, "override train.num_epochs (-1: the demo's)")
FLAGS = flags.FLAGS

NAMES = {"source_only": "source only", "oracle": "oracle (target labels)", "frame": "+ frame discriminator",
         "frame_clip": "+ sequence discriminator", "paper": "+ mean teacher (paper variant)"}


def main(argv):
    del argv
    from svreid_jax import train

    logging.set_verbosity(logging.WARNING)
    data_root = os.path.join(FLAGS.workdir, "data")
    rows, per_seed = [], []
    for variant in FLAGS.variants:
        results = []
        for seed in FLAGS.seeds:
            config = demo.get_config(variant)
            config.seed = int(seed)
            config.data.demo_root = data_root
            if FLAGS.num_epochs > 0:
                config.train.num_epochs = FLAGS.num_epochs
            start = time.perf_counter()
            out = train.train_and_evaluate(config, os.path.join(FLAGS.workdir, f"{variant}_seed{seed}"))
            print(f"{variant} seed {seed}: R-1 {100 * out['rank1']:.1f} mAP {100 * out['mAP']:.1f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            results.append(out)
        r1 = 100 * np.array([r["rank1"] for r in results])
        r5 = 100 * np.array([r["rank5"] for r in results])
        m = 100 * np.array([r["mAP"] for r in results])
        rows.append((NAMES.get(variant, variant), r1, r5, m))
        per_seed.append(" / ".join(f"{a:.0f}, {b:.1f}" for a, b in zip(r1, m)))

    def fmt(x):
        return f"{x.mean():.1f} ± {x.std():.1f}" if len(x) > 1 else f"{x.mean():.1f}"

    table = [f"| demo variant ({len(FLAGS.seeds)} seed(s)) | R-1 | R-5 | mAP | R-1, mAP per seed |",
             "|---|---|---|---|---|"]
    table += [f"| {name} | {fmt(r1)} | {fmt(r5)} | {fmt(m)} | {seeds} |"
              for (name, r1, r5, m), seeds in zip(rows, per_seed)]
    text = "\n".join(table)
    print(text)
    with open(os.path.join(FLAGS.workdir, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
