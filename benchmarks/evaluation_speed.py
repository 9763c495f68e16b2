"""Evaluation speed: feature extraction on the demo data (tracklets/s) and k-reciprocal re-ranking.

  python benchmarks/evaluation_speed.py [--root=/tmp/svreid_demo_data] [--methods=restricted_begin,evenly,dense]
                                        [--repeats=3] [--batch_size=64] [--num_threads=2]
                                        [--rerank_sizes=541x1074,1980x9330]

The demo config (configs/demo.py: tiny ResNet of width 16, 64×32 frames, 4-frame clips) with randomly
initialised weights (the speed does not depend on them) embeds the demo target's test tracklets
(query + gallery), once per temporal method. For each method it prints the first call (tracing and
compilation included) and the median of `repeats` further calls, plus two parts measured alone: decoding
the clips (the grain pipeline without a model) and the jitted model on one ready batch.

Re-ranking (`evaluation.rerank.rerank_features`, k1=20, k2=6, λ=0.3, cosine) is timed on random 256-d
features for each Nq×Ng of --rerank_sizes (CCVID-like 541×1,074 and MARS-like 1,980×9,330 by default):
the first call (compilation included) and the best of two more. Empty --rerank_sizes skips it.
"""
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # noqa: E402
from svreid_jax import builders, parallel  # noqa: E402
from svreid_jax.data import datasets, pipeline, demo as demo_data  # noqa: E402
from svreid_jax.evaluation import features, rerank  # noqa: E402
from svreid_jax.models import reid  # noqa: E402

flags.DEFINE_string("root", "/tmp/svreid_demo_data", "where the demo data are (generated if missing)")
flags.DEFINE_list("methods", ["restricted_begin", "evenly", "dense"], "eval.temporal methods to time")
flags.DEFINE_integer("repeats", 3, "timed calls per method after the first")
flags.DEFINE_integer("batch_size", 64, "eval.batch_size")
flags.DEFINE_integer("num_threads", 2, "data.num_threads (grain decoding threads)")
flags.DEFINE_list("rerank_sizes", ["541x1074", "1980x9330"], "Nq x Ng problems for the re-ranking timing")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = demo.get_config("paper")
    config.eval.batch_size = FLAGS.batch_size
    config.data.num_threads = FLAGS.num_threads
    paths = demo_data.ensure(FLAGS.root)
    target = datasets.load("mars", paths.target_root)
    tracklets = tuple(target.query) + tuple(target.gallery)
    frames = sum(len(t) for t in tracklets)
    print(f"{len(tracklets)} test tracklets ({len(target.query)} query + {len(target.gallery)} gallery), "
          f"{frames} frames; {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"batch {FLAGS.batch_size}, {FLAGS.num_threads} decoding threads")
    model = builders.create_model(config, 80)
    params, batch_stats = reid.init_model(model, jax.random.PRNGKey(0),
                                          (1, config.eval.seq_len, config.data.height, config.data.width, 3))
    mesh = parallel.data_mesh()
    variables = parallel.replicate({"params": params, "batch_stats": batch_stats}, mesh)

    for method in FLAGS.methods:
        config.eval.temporal = method
        spec = builders.clip_spec(config, train=False)
        clips = sum(len(batch["tracklet"][batch["tracklet"] >= 0]) for batch in pipeline.eval_clips(
            tracklets, spec=spec, batch_size=FLAGS.batch_size, method=method, num_threads=FLAGS.num_threads))
        start = time.perf_counter()
        features.tracklet_features(config, model, variables, tracklets, mesh)
        first = time.perf_counter() - start
        times = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            features.tracklet_features(config, model, variables, tracklets, mesh)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        # The two halves alone: decoding only, and the model on one ready batch.
        start = time.perf_counter()
        batches = list(pipeline.eval_clips(tracklets, spec=spec, batch_size=FLAGS.batch_size, method=method,
                                           num_threads=FLAGS.num_threads))
        decode = time.perf_counter() - start
        embed = jax.jit(features.make_embed_step(model))
        video = jax.device_put(batches[0]["video"])
        jax.block_until_ready(embed(variables, video))
        start = time.perf_counter()
        for _ in range(5):
            jax.block_until_ready(embed(variables, video))
        per_batch = (time.perf_counter() - start) / 5
        print(f"{method:>16}: {clips} clips in {len(batches)} batches | first call {first:.2f} s | "
              f"median {median:.2f} s (min {min(times):.2f}) = {len(tracklets) / median:.0f} tracklets/s, "
              f"{clips / median:.0f} clips/s | decoding alone {decode:.2f} s ({clips / decode:.0f} clips/s) | "
              f"model alone {1000 * per_batch:.0f} ms/batch ({FLAGS.batch_size / per_batch:.0f} clips/s)")


    for size in FLAGS.rerank_sizes:
        nq, ng = (int(x) for x in size.split("x"))
        rng = np.random.default_rng(0)
        q = rng.normal(size=(nq, 256)).astype(np.float32)
        g = rng.normal(size=(ng, 256)).astype(np.float32)
        start = time.perf_counter()
        jax.block_until_ready(rerank.rerank_features(q, g))
        first = time.perf_counter() - start
        times = []
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(rerank.rerank_features(q, g))
            times.append(time.perf_counter() - start)
        print(f"re-ranking {nq} x {ng}: first call {first:.2f} s, then {min(times):.2f} s")


if __name__ == "__main__":
    app.run(main)
