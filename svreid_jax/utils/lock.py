"""One process per workdir: an advisory lock on `<workdir>/.lock`.

`hold(workdir)` takes an exclusive `fcntl.flock` on `<workdir>/.lock` (creating the folder and the file)
and writes this process's id into the file. The lock lasts as long as the process (the open file
description is kept until exit, or until `release()`); the kernel drops it when the process ends in any
way, kill -9 included, so a crashed run never leaves a stale lock behind. The file itself is left in
place: deleting it would let a third process lock a new file while the second still holds the old one.

A second process asking for the same workdir gets `WorkdirLocked`, whose message is one line naming
the holder's process id (read from the file) and the lock file.

The lock is advisory: it keeps out other svreid_jax commands, not other programs. Where the file
system cannot lock (some network file systems answer ENOLCK) or `fcntl` does not exist, a warning says
so and the run goes on unlocked.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator

from absl import logging

try:
    import fcntl
except ImportError:  # not POSIX: no flock
    fcntl = None

LOCK_NAME = ".lock"

_held: dict[str, int] = {}  # real path of a held lock file → its descriptor (kept open: the lock lives with it)


class WorkdirLocked(RuntimeError):
    """Another process holds the workdir; the message is one line naming its process id."""


def lock_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def hold(workdir: str) -> str | None:
    """Lock `workdir` for this process (a no-op when it already holds it); return the lock file's path,
    or None where locking is not possible (then a warning says so). WorkdirLocked if another process holds it."""
    path = lock_path(workdir)
    if os.path.realpath(path) in _held:
        return path
    if fcntl is None:
        logging.warning("cannot lock %s on this system (no fcntl): nothing stops a second run on this workdir", path)
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = os.path.realpath(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _holder(path)
            raise WorkdirLocked(f"{os.path.dirname(path)} is in use by {holder} (lock {path}); wait for it to end, "
                                "or give this command another --workdir") from None
        logging.warning("cannot lock %s (%s): nothing stops a second run on this workdir", path,
                        os.strerror(err.errno) if err.errno else err)
        return None
    # Only the holder writes, and only after locking, so the pid in the file is the holder's.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    return path


def _holder(path: str) -> str:
    """'process <pid>' as the lock file says, or 'another process' while the holder has not written it yet."""
    for _ in range(20):  # the holder writes its pid right after locking: a short wait covers that moment
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return f"process {int(text)}"
        time.sleep(0.05)
    return "another process"


@contextlib.contextmanager
def held(workdir: str) -> Iterator[str | None]:
    """`hold(workdir)` for the block only; a lock this process held before the block is kept after it."""
    had = os.path.realpath(lock_path(workdir)) in _held
    path = hold(workdir)
    try:
        yield path
    finally:
        if not had:
            release(workdir)


def release(workdir: str) -> None:
    """Drop this process's lock on `workdir` (if it holds it); the file stays."""
    fd = _held.pop(os.path.realpath(lock_path(workdir)), None)
    if fd is not None:
        os.close(fd)


__all__ = ["LOCK_NAME", "WorkdirLocked", "held", "hold", "lock_path", "release"]
