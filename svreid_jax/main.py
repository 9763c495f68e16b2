"""Command line: svreid-jax (or python -m svreid_jax.main) --config=configs/<target>.py --workdir=<dir> [--mode=...].

Modes:
  train      train (resuming if a checkpoint exists), then evaluate; results.json / results.md
  eval       evaluate the checkpoint (eval.checkpoint) on the target test split, every protocol that
             applies; eval_results.json / .md
  splits     iLIDS-VID/PRID: train and evaluate one model per split (--splits, default 0-9) in
             <workdir>/split_<k>, then mean ± std in splits_results.json / .md (resumable)
  visualize  PNGs in <workdir>/visualize/: ranked lists of eval.visualize_queries queries, and a PCA
             scatter of source vs target embeddings
  extract    features of your own tracklets under --data (<tracklet>/ or <pid>/<camid>/<tracklet>/ frame
             folders) into <workdir>/extract/ (features.npy, index.csv, extract.json, replaced as one)
  export     the embedding of the checkpoint --mode=eval would evaluate into --out=DIR: embed.stablehlo
             (jax.export, uint8 clips [b, T, H, W, 3] → float32 [b, D], symbolic b), model.safetensors,
             config.json; load it with svreid_jax.Embedder.from_export(DIR), no config or checkpoint needed.
             DIR must be new, empty or an earlier export (replaced whole)
  diagnose   <workdir>/diagnostics/: domain and camera probes on the embeddings, the teacher's cluster
             quality against the target identities, rank-1 per camera pair (target labels for the report only)

The modes that write into --workdir (all but export) hold <workdir>/.lock while they run
(svreid_jax/utils/lock.py): a second command on the same workdir is refused in one line naming the
holder's process id. Results already in the workdir are kept, never overwritten (protocols.write_results).

Exit codes: 0 done; 1 a usage, config, data, checkpoint, weights, export, write, evaluation (non-finite
features) or workdir-in-use error (one line on stderr, no traceback); 3 training stopped with its last good
state saved (diverged, or too many non-finite updates; results.json says so instead of giving metrics), or
finished from a rolled-back state (results.json marks the metrics with "status"); 128 + N stopped by signal N after saving (143
SIGTERM, 130 SIGINT): run the same command to resume.

Most logic lives in svreid_jax.train, svreid_jax.builders and svreid_jax.evaluation so that notebooks
can import it. The console shows our own progress lines and every warning; the INFO lines of the
libraries underneath (orbax, jax's backend probe, …) appear with --verbosity=1.
"""
import importlib.util
import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from svreid_jax import builders, config_checks, config_files, splits, train
from svreid_jax.config_checks import ConfigError
from svreid_jax.data.records import DatasetError
from svreid_jax.evaluation import diagnostics, evaluate, export, extract, features, protocols, visualize
from svreid_jax.evaluation.embedder import ExportError
from svreid_jax.interop import hub
from svreid_jax.utils import lock
from svreid_jax.utils.checkpointing import CheckpointError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for logs, checkpoints and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "visualize", "extract", "export", "diagnose", "splits"],
                  "train: train (resuming if a checkpoint exists) then evaluate; eval: evaluate the checkpoint; "
                  "visualize: ranked-list and embedding PNGs; extract: features of the tracklets under --data; "
                  "export: the checkpoint's embedding (jax.export StableHLO, safetensors, config.json) into --out, "
                  "for svreid_jax.Embedder.from_export; "
                  "diagnose: domain/camera probes, teacher cluster quality, rank-1 per camera pair; "
                  "splits: one model per iLIDS-VID/PRID split in <workdir>/split_<k>, then mean ± std.")
flags.DEFINE_string("splits", "0-9", "--mode=splits: the split ids to run, e.g. '0-9' or '0,3,5'.")
flags.DEFINE_string("data", None, "--mode=extract: root of your tracklets, <root>/<tracklet>/*.jpg or "
                    "<root>/<pid>/<camid>/<tracklet>/*.jpg (either also under train/query/gallery sub-folders).")
flags.DEFINE_string("out", None, "--mode=export: the folder to write the export to (new, empty, or an earlier "
                    "export, which is replaced).")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OwnInfoOnly(py_logging.Filter):
    """Lets through warnings and errors from anyone, and INFO only from svreid_jax's own modules."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.name == "asyncio" and record.getMessage().startswith("Task exception was never retrieved"):
            # orbax's write tasks each repeat a failed save with a traceback; the CheckpointError line says it once.
            return False
        return record.levelno >= py_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def quiet_libraries(verbosity: int) -> None:
    """Below verbosity 1, drop the INFO chatter of libraries (they log through absl or Python logging,
    both of which end in absl's handler and the root logger)."""
    if verbosity >= 1:
        return
    for handler in (logging.get_absl_handler(), *py_logging.getLogger().handlers):
        handler.addFilter(_OwnInfoOnly())


def _fail(kind: str, message: str) -> None:
    # Errors that are the user's to fix (config, data, checkpoints): one line naming the field or
    # file, no traceback.
    _say(f"svreid_jax: {kind}: {message}")
    sys.exit(1)


def _say(line: str) -> None:
    # One write with its newline, so that a library thread still logging at exit cannot split it.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _load_config_file(spec: str):
    """The ConfigDict of `path[:arg]` as --config loads it (get_config(arg)), or None if it cannot."""
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("_svreid_jax_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:  # noqa: BLE001 — only used to name fields; absl reports the load error itself
        return None


def _override_paths(argv) -> list[str]:
    """The field paths of the --config.<path>[=value] arguments (also --noconfig.<path>)."""
    paths = []
    for arg in argv[1:]:
        name = arg.lstrip("-").partition("=")[0]
        if name.startswith("noconfig."):
            name = name[2:]
        if arg.startswith("-") and name.startswith("config."):
            paths.append(name[len("config."):])
    return paths


def parse_flags(argv):
    """absl's flag parsing, with one line instead of a traceback for an override of a field the
    config does not have (naming the closest fields) and for a config file that raised."""
    for path in config_files.config_paths(argv):
        config_files.import_package_of(path)  # its `from configs import ...`, from any working directory
    try:
        return FLAGS(argv)
    except flags.Error as err:
        message = str(err)
        if "Traceback (most recent call last)" in message:  # the config file's get_config raised
            lines = [line for line in message.splitlines() if line.strip()]
            message = f"{lines[0].split(':', 1)[0]}: {lines[-1].strip()}"
        _fail("config error" if "--config" in message else "usage error", message)
    except (AttributeError, KeyError) as err:  # ml_collections: a --config.<path> the config lacks
        specs = [value for flag, value in zip(argv, argv[1:]) if flag == "--config"]
        specs += [a.partition("=")[2] for a in argv[1:] if a.startswith("--config=")]
        config = _load_config_file(specs[-1]) if specs else None
        unknown = [p for p in _override_paths(argv) if config is not None and not config_checks.has_field(config, p)]
        if unknown:
            _fail("config error", config_checks.unknown_field_message(unknown[0], config))
        _fail("config error", f"{type(err).__name__}: {err}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries(FLAGS.verbosity)
    try:
        config = FLAGS.config
        config_checks.validate(config)
    except (OSError, ConfigError) as err:  # OSError: --config names no readable file
        _fail("config error", " ".join(str(err).split()))
    try:
        _hold_workdir(config)
        _run_mode(config)
    except lock.WorkdirLocked as err:
        _fail("workdir error", str(err))
    except ConfigError as err:
        _fail("config error", str(err))
    except DatasetError as err:
        # Bad or missing data is the user's to fix: one message naming the file, no traceback.
        _fail("data error", str(err))
    except CheckpointError as err:
        _fail("checkpoint error", str(err))
    except ExportError as err:
        _fail("export error", str(err))
    except features.FeatureError as err:  # NaN/inf or all-zero embeddings: no metric is computed from them
        _fail("evaluation error", str(err))
    except protocols.OutputError as err:  # a full disk while writing results: the earlier ones are whole
        _fail("write error", str(err))
    except (hub.HubError, builders.WeightsError) as err:
        # Weights that cannot be had (hub offline, a hash mismatch, a missing or unreadable init_from file).
        _fail("weights error", " ".join(str(err).split()))
    except train.TrainingStopped as err:
        _say(f"svreid_jax: {err}")
        sys.exit(err.exit_code)


# The modes that write into --workdir; each holds <workdir>/.lock for the whole process (utils/lock.py).
# export reads the workdir and writes only to --out.
LOCKING_MODES = ("train", "splits", "eval", "visualize", "extract", "diagnose")


def _hold_workdir(config) -> None:
    """Lock --workdir for a mode that writes into it. WorkdirLocked if another process holds it.

    A multi-host run's processes share the workdir and only process 0 writes into it, so only process 0
    locks: train and splits join the cluster here (train.py then finds it joined) to learn their index.
    The evaluation modes never join one; under a multi-host config each process runs them on its own, and
    none locks, as none can tell whether it is process 0.
    """
    if FLAGS.mode not in LOCKING_MODES:
        return
    if config.parallel.multihost:
        if FLAGS.mode not in ("train", "splits"):
            return
        import jax  # only here: the cluster must be joined before anything else touches jax

        if not jax.distributed.is_initialized():
            jax.distributed.initialize()
        if jax.process_index() != 0:
            return
    lock.hold(FLAGS.workdir)


def _run_mode(config):
    logging.info("config:\n%s", config)
    if FLAGS.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "splits":
        try:
            split_ids = splits.parse_split_ids(FLAGS.splits)
        except ValueError as err:
            _fail("usage error", str(err))
        splits.run(config, FLAGS.workdir, split_ids)
    elif FLAGS.mode == "eval":
        evaluate.evaluate_checkpoint(config, FLAGS.workdir)
    elif FLAGS.mode == "visualize":
        visualize.run_visualize(config, FLAGS.workdir)
    elif FLAGS.mode == "diagnose":
        diagnostics.run_diagnostics(config, FLAGS.workdir)
    elif FLAGS.mode == "export":
        if not FLAGS.out:
            raise app.UsageError("--mode=export needs --out=<folder to write the export to>")
        export.run_export(config, FLAGS.workdir, FLAGS.out)
    else:
        if not FLAGS.data:
            raise app.UsageError("--mode=extract needs --data=<folder of <tracklet>/ or <pid>/<camid>/<tracklet>/ "
                                 "frame folders>")
        extract.run_extract(config, FLAGS.workdir, FLAGS.data)


def run():
    if __name__ != "__main__":
        # The svreid-jax console command: its __main__ is a wrapper script, where absl's --help looks for the
        # usage text and the flags to list; lend it this module's, as `python -m svreid_jax.main` shows them.
        sys.modules["__main__"].__doc__ = sys.modules["__main__"].__doc__ or __doc__
        for flag in FLAGS.get_key_flags_for_module(__name__):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
