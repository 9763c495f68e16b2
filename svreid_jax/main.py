"""Command line: python -m svreid_jax.main --config=configs/<target>.py --workdir=<dir> [--mode=...].

Modes:
  train      train (resuming if a checkpoint exists), then evaluate; results.json / results.md
  eval       evaluate the checkpoint (eval.checkpoint) on the target test split, every protocol that
             applies; eval_results.json / .md
  splits     iLIDS-VID/PRID: train and evaluate one model per split (--splits, default 0-9) in
             <workdir>/split_<k>, then mean ± std in splits_results.json / .md (resumable)
  visualize  PNGs in <workdir>/visualize/: ranked lists of eval.visualize_queries queries, and a PCA
             scatter of source vs target embeddings
  extract    features of your own tracklets under --data (the `folder` layout) into <workdir>/extract/
  diagnose   <workdir>/diagnostics/: domain and camera probes on the embeddings, the teacher's cluster
             quality against the target identities, rank-1 per camera pair (target labels for the report only)

Most logic lives in svreid_jax.train, svreid_jax.builders and svreid_jax.evaluation so that notebooks
can import it. The console shows our own progress lines and every warning; the INFO lines of the
libraries underneath (orbax, jax's backend probe, …) appear with --verbosity=1.
"""
import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from svreid_jax import splits, train
from svreid_jax.data.records import DatasetError
from svreid_jax.evaluation import diagnostics, evaluate, extract, visualize

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "visualize", "extract", "diagnose", "splits"],
                  "train: train (resuming if a checkpoint exists) then evaluate; eval: evaluate the checkpoint; "
                  "visualize: ranked-list and embedding PNGs; extract: features of the tracklets under --data; "
                  "diagnose: domain/camera probes, teacher cluster quality, rank-1 per camera pair; "
                  "splits: one model per iLIDS-VID/PRID split in <workdir>/split_<k>, then mean ± std.")
flags.DEFINE_string("splits", "0-9", "--mode=splits: the split ids to run, e.g. '0-9' or '0,3,5'.")
flags.DEFINE_string("data", None, "--mode=extract: root of your tracklets, <root>/<pid>/<camid>/<tracklet>/*.jpg "
                    "(or with train/query/gallery sub-folders).")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OwnInfoOnly(py_logging.Filter):
    """Lets through warnings and errors from anyone, and INFO only from svreid_jax's own modules."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def quiet_libraries(verbosity: int) -> None:
    """Below verbosity 1, drop the INFO chatter of libraries (they log through absl or Python logging,
    both of which end in absl's handler and the root logger)."""
    if verbosity >= 1:
        return
    for handler in (logging.get_absl_handler(), *py_logging.getLogger().handlers):
        handler.addFilter(_OwnInfoOnly())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries(FLAGS.verbosity)
    try:
        _run_mode(FLAGS.config)
    except DatasetError as err:
        # Bad or missing data is the user's to fix: one message naming the file, no traceback.
        print(f"svreid_jax: data error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


def _run_mode(config):
    logging.info("config:\n%s", config)
    if FLAGS.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "splits":
        splits.run(config, FLAGS.workdir, FLAGS.splits)
    elif FLAGS.mode == "eval":
        evaluate.evaluate_checkpoint(config, FLAGS.workdir)
    elif FLAGS.mode == "visualize":
        visualize.run_visualize(config, FLAGS.workdir)
    elif FLAGS.mode == "diagnose":
        diagnostics.run_diagnostics(config, FLAGS.workdir)
    else:
        if not FLAGS.data:
            raise app.UsageError("--mode=extract needs --data=<folder of <pid>/<camid>/<tracklet>/ frames>")
        extract.run_extract(config, FLAGS.workdir, FLAGS.data)


def run():
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
