"""Command line: python -m svreid_jax.main --config=configs/<target>.py --workdir=<dir> [--mode=train|eval].

Most logic lives in svreid_jax.train so that notebooks can import it.
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (resuming if a checkpoint exists) then evaluate; eval: evaluate the latest checkpoint.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from svreid_jax import train  # after flag parsing: grain and jax read absl flags

    config = FLAGS.config
    logging.info("config:\n%s", config)
    if FLAGS.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    else:
        train.evaluate_checkpoint(config, FLAGS.workdir)


def run():
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
