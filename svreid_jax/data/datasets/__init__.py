"""Dataset readers behind one entry point: `load(name, root, **options) -> DatasetSplits`.

Adding a dataset: write `datasets/<name>.py` with a function `(root, **options) -> DatasetSplits`
and add one line to LOADERS below.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from svreid_jax.data.datasets import mars, svreid
from svreid_jax.data.records import DatasetSplits

# name → reader. Options of a reader are its keyword arguments after `root`.
LOADERS: dict[str, Callable[..., DatasetSplits]] = {
    "svreid": svreid.load_svreid,
    "svreid_cc": svreid.load_svreid_cc,
    "svreid_plus": svreid.load_svreid_plus,
    "mars": mars.load_mars,
}


def names() -> tuple[str, ...]:
    """The registered dataset names, sorted."""
    return tuple(sorted(LOADERS))


def load(name: str, root: str, **options) -> DatasetSplits:
    """Read dataset `name` from folder `root`.

    Unknown names and unknown options raise ValueError listing what is accepted; bad or missing
    files raise `records.DatasetError` (a ValueError) naming the file and line or key.
    """
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}") from None
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(accepted) or 'none'}")
    return loader(root, **options)
