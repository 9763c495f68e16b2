"""Outputs that are replaced whole: a reader sees the old file (or set of files) or the new one, never a mix.

`write_text(path, text)` / `write_json(path, data)` / `write_bytes(path, data)`: one file, written to a
hidden temporary file in the same folder, flushed to disk (fsync) and renamed over `path`; a full disk or
a crash leaves the previous file as it was and at most a hidden `.<name>.tmp-<random>` beside it.

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
import json
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


def write_bytes(path: str, data: bytes) -> None:
    """Replace the file `path` by `data` atomically (temporary file, fsync, os.replace)."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:10]}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):  # keep the old file's permissions, as writing in place would
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _sync_folder(parent)


def write_text(path: str, text: str) -> None:
    """`write_bytes` for UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, data, **dump_options) -> None:
    """`write_text` of `json.dumps(data, **dump_options)` (indent 2 unless given) plus a final newline.

    The whole document is serialised before the file is touched, so an unserialisable value raises with
    the old file intact.
    """
    dump_options.setdefault("indent", 2)
    write_text(path, json.dumps(data, **dump_options) + "\n")


def _sync_folder(folder: str) -> None:
    # The rename is durable only once the folder's entry is on disk; not every file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["replaced_directory", "write_bytes", "write_json", "write_text"]
