"""The standard multi-split protocol of iLIDS-VID and PRID2011: one model per train/test split.

`python -m svreid_jax.main --mode=splits --config=configs/ilidsvid.py --workdir=runs/ilidsvid [--splits=0-9]`

For every split k the config's `data.target.options.split_id` becomes k and the run trains and
evaluates in its own `<workdir>/split_<k>` (`train.train_and_evaluate`): the model adapts to split k's
training persons only and is tested on split k's test persons, none of which it has seen. The mean and
sample standard deviation (ddof=1) of the splits' primary metrics go to `<workdir>/splits_results.json`
and `.md` (docs/METHOD.md §7.5).

Resumable: a split whose `results.json` exists is read, not run again; an interrupted split resumes
from its latest checkpoint, as any training run. `--mode=eval` with `eval.one_checkpoint_all_splits`
is the other, transductive measurement (one checkpoint tested on every split).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

from absl import logging

from svreid_jax import train
from svreid_jax.data import datasets
from svreid_jax.evaluation import protocols

NUM_SPLITS = 10  # iLIDS-VID and PRID2011 ship 10 random halvings of their persons
SUMMARY_KEYS = protocols.METRIC_KEYS + ("num_valid_queries",)
RESULTS_NAME = "splits_results"


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
    """The target must be a dataset with train/test splits, read from its folder."""
    name = config.data.target.name
    if "split_id" not in datasets.options(name):
        raise ValueError(f"--mode=splits trains one model per train/test split of a target whose reader takes a "
                         f"split_id (iLIDS-VID, PRID); config.data.target.name={name!r} has none")
    if config.data.target.packed:
        raise ValueError("--mode=splits sets data.target.options.split_id per split, which packed shards cannot "
                         f"change (config.data.target.packed={config.data.target.packed!r}); read the folder instead")
    if config.data.demo:
        raise ValueError("--mode=splits needs a target with splits; config.data.demo generates a MARS-layout "
                         "target (set data.demo=False and point data.source.root / data.target.root at the data)")


def run_splits(config, workdir: str, split_ids: Iterable[int] = range(NUM_SPLITS), *,
               train_fn: Callable = train.train_and_evaluate) -> protocols.SplitsResult:
    """Train and evaluate one model per split in <workdir>/split_<k>, then write and return mean ± std.

    config: a config for a target with splits (check_config); its split_id option is replaced per split.
    train_fn(config, workdir) -> flat final metrics (train.train_and_evaluate; tests pass a stand-in).
    Returns protocols.SplitsResult over SUMMARY_KEYS (rank-1/5/10/20, mAP, valid queries).
    """
    check_config(config)
    split_ids = tuple(split_ids)
    per_split = []
    for k in split_ids:
        directory = split_workdir(workdir, k)
        done = os.path.join(directory, "results.json")
        if os.path.exists(done):
            logging.info("split %d: already done, reading %s", k, done)
            with open(done, encoding="utf-8") as f:
                metrics = json.load(f)
        else:
            logging.info("split %d: training and evaluating in %s", k, directory)
            split_config = config.copy_and_resolve_references()
            with split_config.unlocked():
                split_config.data.target.options.split_id = k
            metrics = train_fn(split_config, directory)
        missing = [key for key in SUMMARY_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"split {k}: the results in {directory} lack {missing}")
        per_split.append({key: float(metrics[key]) for key in SUMMARY_KEYS})
    mean, std = protocols.mean_std(per_split)
    result = protocols.SplitsResult(split_ids=split_ids, per_split=tuple(per_split), mean=mean, std=std)
    write_summary(config, workdir, result)
    return result


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


def run(config, workdir: str, splits: str = f"0-{NUM_SPLITS - 1}") -> dict[str, float]:
    """--mode=splits: run_splits over the ids `splits` names, the table printed; returns the flat metrics
    (means, 'std/<metric>', 'split_<k>/<metric>')."""
    result = run_splits(config, workdir, parse_split_ids(splits))
    print(summary_table(config, result), flush=True)
    return result.flat()
