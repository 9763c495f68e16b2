"""Output folders that are replaced whole: a reader sees the old set of files or the new one, never a mix.

`replaced_directory(path)` hands out an empty staging folder next to `path` (same parent, so the same
file system and a rename is atomic). When the block ends normally the staging folder takes `path`'s
name; the folder that was there (with everything in it) is moved aside first and deleted after. When
the block raises, the staging folder is deleted and `path` is left as it was.

The one moment without a complete folder is between the two renames, when `path` does not exist;
a crash there leaves the old folder as `.<name>.old-<random>/<name>` and the new one as
`.<name>.new-<random>` beside it. A crash while writing leaves only the hidden staging folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator


def _fresh_folder(parent: str, prefix: str) -> str:
    # os.mkdir honours the umask (tempfile.mkdtemp would leave the output readable by its owner only).
    while True:
        path = os.path.join(parent, f"{prefix}{uuid.uuid4().hex[:10]}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def replaced_directory(path: str) -> Iterator[str]:
    """Yield an empty staging folder; on normal exit it becomes `path` (replacing a folder there)."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = _fresh_folder(parent, f".{name}.new-")
    try:
        yield staging
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: str, path: str) -> None:
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    parent, name = os.path.split(path)
    aside = _fresh_folder(parent, f".{name}.old-")
    os.rename(path, os.path.join(aside, name))
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(os.path.join(aside, name), path)
        os.rmdir(aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)


__all__ = ["replaced_directory"]
