"""Command line: python -m svreid_jax.main --config=configs/<target>.py --workdir=<dir> [--mode=...].

Modes:
  train      train (resuming if a checkpoint exists), then evaluate; results.json / results.md
  eval       evaluate the checkpoint (eval.checkpoint) on the target test split, every protocol that
             applies (eval.all_splits: iLIDS-VID/PRID mean ± std over 10 splits); eval_results.json / .md
  visualize  PNGs in <workdir>/visualize/: ranked lists of eval.visualize_queries queries, and a PCA
             scatter of source vs target embeddings
  extract    features of your own tracklets under --data (the `folder` layout) into <workdir>/extract/

Most logic lives in svreid_jax.train and svreid_jax.evaluation so that notebooks can import it.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "visualize", "extract"],
                  "train: train (resuming if a checkpoint exists) then evaluate; eval: evaluate the checkpoint; "
                  "visualize: ranked-list and embedding PNGs; extract: features of the tracklets under --data.")
flags.DEFINE_string("data", None, "--mode=extract: root of your tracklets, <root>/<pid>/<camid>/<tracklet>/*.jpg "
                    "(or with train/query/gallery sub-folders).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from svreid_jax.data.records import DatasetError

    try:
        _run_mode(FLAGS.config)
    except DatasetError as err:
        # Bad or missing data is the user's to fix: one message naming the file, no traceback.
        print(f"svreid_jax: data error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


def _run_mode(config):
    from svreid_jax import train  # after flag parsing: grain and jax read absl flags

    logging.info("config:\n%s", config)
    if FLAGS.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        train.evaluate_checkpoint(config, FLAGS.workdir)
    elif FLAGS.mode == "visualize":
        from svreid_jax.evaluation import visualize

        visualize.run_visualize(config, FLAGS.workdir)
    else:
        if not FLAGS.data:
            raise app.UsageError("--mode=extract needs --data=<folder of <pid>/<camid>/<tracklet>/ frames>")
        from svreid_jax.evaluation import extract

        extract.run_extract(config, FLAGS.workdir, FLAGS.data)


def run():
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
