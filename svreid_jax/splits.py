"""The standard multi-split protocol of iLIDS-VID and PRID2011: one model per train/test split.

`python -m svreid_jax.main --mode=splits --config=configs/ilidsvid.py --workdir=runs/ilidsvid [--splits=0-9]`

For every split k the config's `data.target.options.split_id` becomes k and the run trains and
evaluates in its own `<workdir>/split_<k>` (`train.train_and_evaluate`): the model adapts to split k's
training persons only and is tested on split k's test persons, none of which it has seen. The mean and
sample standard deviation (ddof=1) of the splits' primary metrics go to `<workdir>/splits_results.json`
and `.md` (docs/METHOD.md §7.5).

Resumable: a finished split's results are read, not made again, when they can be trusted: its
`results.json` is complete and a finished run's, and `split.json` (written beside it when the split
finished) records the same results and a config equal to the current one in every field that can change
them. Otherwise (a half-written or unreadable file, a stopped run, other settings such as other eval.*)
a warning names the reason and the split runs again: it resumes from its latest checkpoint as any
training run, so a finished split is only evaluated again (its earlier results.json kept as
results-<n>.json, protocols.write_results), and a changed training setting is refused in one line.
`--mode=eval` with `eval.one_checkpoint_all_splits` is the other, transductive measurement (one
checkpoint tested on every split).
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Callable, Iterable

from absl import logging

from svreid_jax import config_checks, train
from svreid_jax.data import datasets
from svreid_jax.evaluation import protocols
from svreid_jax.utils import atomic, lock

NUM_SPLITS = 10  # iLIDS-VID and PRID2011 ship 10 random halvings of their persons
SUMMARY_KEYS = protocols.METRIC_KEYS + ("num_valid_queries",)
RESULTS_NAME = "splits_results"
RECORD_NAME = "split.json"  # in each split's folder: the config and results of the run that finished it
# Config fields that cannot change a split's results (threads, logging, checkpoint cadence, the stop
# rules' grace): a stored split that differs from the current config only in these is reused.
NO_EFFECT = ("data.num_threads", "data.prefetch", "data.device_prefetch", "data.num_workers",
             "train.log_every_steps", "train.checkpoint_every_epochs", "train.keep_checkpoints", "train.stop_grace_sec",
             "train.allow_resume_changes", "model.remat", "parallel.*")


def parse_split_ids(text: str) -> tuple[int, ...]:
    """'0-9' → (0, …, 9); '0,3,5' → (0, 3, 5); '2' → (2,). ValueError on anything else or a repeat."""
    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--splits={text!r}: expected split ids like '0-9' or '0,3,5'") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ValueError(f"--splits={text!r}: expected distinct non-negative split ids like '0-9' or '0,3,5'")
    return tuple(ids)


def split_workdir(workdir: str, split_id: int) -> str:
    return os.path.join(workdir, f"split_{split_id}")


def check_config(config) -> None:
    """The target must be a dataset with train/test splits, read from its folder; ConfigError (a ValueError)
    naming the field otherwise."""
    name = config.data.target.name
    error = config_checks.ConfigError
    if "split_id" not in datasets.options(name):
        raise error(f"--mode=splits trains one model per train/test split of a target whose reader takes a "
                    f"split_id (iLIDS-VID, PRID); config.data.target.name={name!r} has none")
    if config.data.target.packed:
        raise error("--mode=splits sets data.target.options.split_id per split, which packed shards cannot "
                    f"change (config.data.target.packed={config.data.target.packed!r}); read the folder instead")
    if config.data.demo:
        raise error("--mode=splits needs a target with splits; config.data.demo generates a MARS-layout "
                    "target (set data.demo=False and point data.source.root / data.target.root at the data)")


def run_splits(config, workdir: str, split_ids: Iterable[int] = range(NUM_SPLITS), *,
               train_fn: Callable = train.train_and_evaluate) -> protocols.SplitsResult:
    """Train and evaluate one model per split in <workdir>/split_<k>, then write and return mean ± std.

    config: a config for a target with splits (check_config); its split_id option is replaced per split.
    train_fn(config, workdir) -> flat final metrics (train.train_and_evaluate; tests pass a stand-in).
    A split's stored results are reused only when `stored_results` vouches for them; otherwise the split
    runs (again): train_and_evaluate resumes from its checkpoints, so a finished split is only evaluated
    again, and a training setting that differs is refused in one line (train.check_resume). Each split's
    folder is locked while it runs (utils/lock.py). A split that stops (diverged, a signal) raises
    train.TrainingStopped naming it; no mean is written without every split.
    Returns protocols.SplitsResult over SUMMARY_KEYS (rank-1/5/10/20, mAP, valid queries).
    """
    check_config(config)
    split_ids = tuple(split_ids)
    per_split = []
    for k in split_ids:
        directory = split_workdir(workdir, k)
        split_config = config.copy_and_resolve_references()
        with split_config.unlocked():
            split_config.data.target.options.split_id = k
        metrics, why = stored_results(directory, split_config)
        if metrics is not None:
            logging.info("split %d: already done, reading %s", k, os.path.join(directory, "results.json"))
        else:
            if why:
                logging.warning("split %d: %s; running it again (it resumes from its checkpoints)", k, why)
            logging.info("split %d: training and evaluating in %s", k, directory)
            with lock.held(directory):
                try:
                    metrics = train_fn(split_config, directory)
                except train.TrainingStopped as err:
                    raise train.TrainingStopped(f"split {k}: {err}", err.exit_code) from None
                missing = [key for key in SUMMARY_KEYS if key not in metrics]
                if missing:
                    raise ValueError(f"split {k}: the results of the run in {directory} lack {missing}")
                _write_record(directory, k, split_config, metrics)
        per_split.append({key: float(metrics[key]) for key in SUMMARY_KEYS})
    mean, std = protocols.mean_std(per_split)
    result = protocols.SplitsResult(split_ids=split_ids, per_split=tuple(per_split), mean=mean, std=std)
    write_summary(config, workdir, result)
    return result


def _write_record(directory: str, split_id: int, split_config, metrics) -> None:
    record = {"split_id": split_id, "config": config_checks.as_json(split_config),
              "results": {key: float(metrics[key]) for key in SUMMARY_KEYS}}
    atomic.write_json(os.path.join(directory, RECORD_NAME), record)


def _read_json(path: str) -> tuple[object, str | None]:
    """(the parsed file, None) or (None, why not)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, or bytes that are not UTF-8
        return None, f"{path} cannot be read as JSON ({' '.join(str(err).split())}), so it is not counted as done"


def result_changes(stored: dict, current) -> list[tuple[str, object, object]]:
    """[(field, stored value, current value)] of the config fields that differ between a split's record
    and `current`, leaving out those that cannot change its results (NO_EFFECT)."""
    old, new = config_checks.flat_fields(stored), config_checks.flat_fields(config_checks.as_json(current))
    return [(field, old.get(field), new.get(field)) for field in sorted(set(old) | set(new))
            if old.get(field) != new.get(field) and not any(fnmatch.fnmatchcase(field, p) for p in NO_EFFECT)]


def stored_results(directory: str, split_config) -> tuple[dict | None, str | None]:
    """(the results of a finished split to reuse, None), or (None, why they cannot be reused), or
    (None, None) for a split not started.

    Reused only when <directory>/results.json parses, is a finished run's (no stopped "status"; every
    metric of SUMMARY_KEYS a number), and <directory>/split.json — what this module wrote when the
    split finished — parses, records the same results and a config that equals `split_config` in every
    field that can change them (`result_changes`).
    """
    results_path, record_path = os.path.join(directory, "results.json"), os.path.join(directory, RECORD_NAME)
    if not os.path.exists(results_path):
        return None, (f"{record_path} exists but {results_path} is missing" if os.path.exists(record_path) else None)
    results, why = _read_json(results_path)
    if why:
        return None, why
    if not isinstance(results, dict):
        return None, f"{results_path} holds no results object"
    if results.get("status", "finished") != "finished":
        return None, (f"{results_path} says the run stopped ({results.get('status')} at step {results.get('step')}: "
                      f"{results.get('message', '')})")
    bad = [key for key in SUMMARY_KEYS if not _is_number(results.get(key))]
    if bad:
        return None, f"{results_path} lacks the metrics {bad}"
    record, why = _read_json(record_path)
    if why:
        return None, f"no record of the settings {results_path} was made with ({why})"
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None, f"{record_path} holds no config"
    changes = result_changes(record["config"], split_config)
    if changes:
        return None, (f"{results_path} was made with other settings: {config_checks.describe_changes(changes[:5])}"
                      f"{f' and {len(changes) - 5} more' if len(changes) > 5 else ''}")
    recorded = record.get("results") or {}
    if not all(_same(recorded.get(key), float(results[key])) for key in SUMMARY_KEYS):
        return None, f"{results_path} is not the result {record_path} recorded (another run wrote it since)"
    return results, None


def _same(a, b: float) -> bool:
    return _is_number(a) and (a == b or (math.isnan(a) and math.isnan(b)))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_table(config, result: protocols.SplitsResult) -> str:
    """Markdown: the mean ± std row (one model per split) above one row per split."""
    title = f"{config.data.source.name} → {config.data.target.name}"
    rows, std = protocols.unflatten(result.flat(), f"mean ± std ({len(result.split_ids)} splits, one model each)")
    return protocols.markdown_table(rows, title, std)


def write_summary(config, workdir: str, result: protocols.SplitsResult) -> tuple[str, str]:
    """<workdir>/splits_results.json (per split, mean, std, where each run lives) and .md (the table)."""
    report = {"title": f"{config.data.source.name} → {config.data.target.name}",
              "protocol": "one model per split, trained on its training persons, tested on its test persons",
              "split_ids": list(result.split_ids),
              "workdirs": [split_workdir(workdir, k) for k in result.split_ids],
              "per_split": list(result.per_split), "mean": result.mean, "std": result.std}
    return protocols.write_results(workdir, RESULTS_NAME, report, summary_table(config, result))


def run(config, workdir: str, splits: str | Iterable[int] = f"0-{NUM_SPLITS - 1}") -> dict[str, float]:
    """--mode=splits: run_splits over the ids `splits` names ('0-9', or the ids), the table printed; returns
    the flat metrics (means, 'std/<metric>', 'split_<k>/<metric>')."""
    result = run_splits(config, workdir, parse_split_ids(splits) if isinstance(splits, str) else tuple(splits))
    print(summary_table(config, result), flush=True)
    return result.flat()
