"""Dataset readers behind one entry point: `load(name, root, **options) -> DatasetSplits`.

Adding a dataset: write `datasets/<name>.py` with a function `(root, **options) -> DatasetSplits`
and add one line to LOADERS below (and to WITH_STATS if it also reports what it dropped), or call
`register` from your own code.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from absl import logging

from svreid_jax.data.datasets import _common, ccvid, folder, ilidsvid, lsvid, mars, prid, svreid
from svreid_jax.data.records import DatasetError, DatasetSplits
from svreid_jax.utils.registry import Registry

# name → reader. Options of a reader are its keyword arguments after `root`.
LOADERS = Registry("dataset", "data.<source|target>.name", {
    "svreid": svreid.load_svreid,
    "svreid_cc": svreid.load_svreid_cc,
    "svreid_plus": svreid.load_svreid_plus,
    "mars": mars.load_mars,
    "ilidsvid": ilidsvid.load_ilidsvid,
    "prid": prid.load_prid,
    "lsvid": lsvid.load_lsvid,
    "ccvid": ccvid.load_ccvid,
    "folder": folder.load_folder,
})

# name → {split: the files (relative to the dataset folder) that split is read from}, for messages.
SPLIT_FILES: dict[str, dict[str, str]] = {
    "svreid": {"train": "train_svreid.txt", "query": "query.txt", "gallery": "gallery.txt"},
    "svreid_cc": {"train": "train_svreid_cc.txt", "query": "query.txt", "gallery": "gallery.txt"},
    "svreid_plus": {"train": "train_svreid_plus.txt", "query": "query.txt", "gallery": "gallery.txt"},
    "mars": {"train": "info/train_name.txt with info/tracks_train_info.mat (pid -1 rows dropped)",
             "query": "info/query_IDX.mat", "gallery": "info/tracks_test_info.mat"},
    "lsvid": {"train": "list_sequence/list_seq_train.txt (pid -1 rows dropped)", "query": "test/data/info_test.mat",
              "gallery": "list_sequence/list_seq_test.txt"},
    "ccvid": {"train": "train.txt", "query": "query.txt", "gallery": "gallery.txt"},
    "ilidsvid": {s: "splits.json or 'train-test people splits/train_test_splits_ilidsvid.mat'"
                 for s in ("train", "query", "gallery")},
    "prid": {s: "splits_prid2011.json" for s in ("train", "query", "gallery")},
    "folder": {"train": "<root>/train/ (or <root> itself in the flat layout)", "query": "<root>/query/",
               "gallery": "<root>/gallery/"},
}

# name → the same reader returning (DatasetSplits, a dataclass of counts: rows read, rows dropped, ...),
# with the same options.
WITH_STATS: dict[str, Callable[..., tuple[DatasetSplits, Any]]] = {
    "mars": mars.load_with_stats,
    "prid": prid.load_with_stats,
    "lsvid": lsvid.load_with_stats,
}


def register(name: str, loader: Callable[..., DatasetSplits],
             with_stats: Callable[..., tuple[DatasetSplits, Any]] | None = None) -> None:
    """Make `data.<source|target>.name=name` read with `loader` (and `load_with_stats` with `with_stats`,
    same options); a name may be registered once."""
    LOADERS.register(name, loader)
    if with_stats is not None:
        WITH_STATS[name] = with_stats


def unregister(name: str) -> None:
    """Remove `name` (tests and notebooks that try a reader out)."""
    LOADERS.unregister(name)
    WITH_STATS.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered dataset names, sorted."""
    return tuple(LOADERS.names())


def options(name: str) -> dict[str, Any]:
    """The options of dataset `name` with their defaults. Unknown name → ValueError listing the known ones."""
    loader = LOADERS.get(name)
    return {p.name: p.default for p in inspect.signature(loader).parameters.values() if p.name != "root"}


def _check_options(name: str, given: dict) -> None:
    accepted = options(name)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(accepted) or 'none'}")


def _warn_ignored(name: str, ignored: list[str]) -> None:
    # No frame disappears silently: a tracklet folder's other files are named (a few; check.py lists all).
    if ignored:
        logging.warning("%s: left out %d file(s) in tracklet folders that are not %s frames, e.g. %s",
                        name, len(ignored), "/".join(_common.FRAME_EXTENSIONS), ", ".join(ignored[:3]))


def load(name: str, root: str, **options) -> DatasetSplits:
    """Read dataset `name` from folder `root`.

    Unknown names and unknown options raise ValueError listing what is accepted; bad or missing
    files raise `records.DatasetError` (a ValueError) naming the file and line or key. Files of a
    tracklet folder that are not frames (_common.FRAME_EXTENSIONS) are left out with a warning.
    """
    _check_options(name, options)
    with _common.collect_ignored() as ignored:
        splits = LOADERS.get(name)(root, **options)
    _warn_ignored(name, ignored)
    return splits


def load_with_stats(name: str, root: str, **options) -> tuple[DatasetSplits, Any]:
    """`load`, plus the reader's counts of what it read and dropped (None for readers without any)."""
    _check_options(name, options)
    with _common.collect_ignored() as ignored:
        if name in WITH_STATS:
            result = WITH_STATS[name](root, **options)
        else:
            result = LOADERS.get(name)(root, **options), None
    _warn_ignored(name, ignored)
    return result


def require_split(tracklets, split: str, name: str, where: str, role: str, *, others: str = "") -> None:
    """A one-line DatasetError when `tracklets` (split `split` of dataset `name`, read by `where`: the
    reader on its root, or the packed directory) is empty, naming the list file(s) it comes from. `role`
    is the config entry, e.g. 'target' for data.target; `others` adds the other splits' sizes to the
    message. Call it where a split must hold data, e.g. the train splits before training (readers return
    empty splits legitimately, e.g. for evaluation-only data)."""
    if len(tracklets):
        return
    source = SPLIT_FILES.get(name, {}).get(split)
    read_from = f"; it is read from {source}" if source else f"; check that dataset's {split} list or {split} folder"
    raise DatasetError(f"data.{role}: {where} gives an empty {split} split (0 tracklets{others}){read_from}")