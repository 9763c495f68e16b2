"""Helpers shared by the dataset readers: checked file access, list parsing, frame ordering.

Every failure is a `DatasetError` whose message names the file (and line or key) and says what was
expected, so a user pointing a config at the wrong folder sees one readable sentence.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from svreid_jax.data.records import DatasetError

# The last run of digits in a file name: 'frame_12.jpg' → 12, '0001C1T0001F012.jpg' → 12.
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def require_root(root: str, dataset: str, layout: str) -> str:
    """`root` as an absolute path, or a DatasetError that names it and sketches the expected tree."""
    if not root:
        raise DatasetError(f"{dataset}: no dataset root given; expected a folder laid out as\n{layout}")
    path = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(path):
        raise DatasetError(f"{dataset}: dataset root {path} does not exist or is not a folder; "
                           f"expected a folder laid out as\n{layout}")
    return path


def require_file(path: str, dataset: str, what: str) -> str:
    """`path` if it is a file, else a DatasetError saying which file is missing and what it holds."""
    if not os.path.isfile(path):
        raise DatasetError(f"{dataset}: missing file {path} ({what})")
    return path


def require_dir(path: str, dataset: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"{dataset}: missing folder {path} ({what})")
    return path


def read_lines(path: str, dataset: str) -> list[str]:
    """The lines of a text file, without line ends. Unreadable / non-UTF-8 files → DatasetError."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{dataset}: cannot read {path}: {e}") from None


def read_fields(path: str, dataset: str, fields: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Whitespace-separated records of a list file, blank lines skipped.

    Returns [(1-based line number, tokens)], each with exactly len(fields) tokens; a line with
    another count → DatasetError naming the file, the line and the expected fields.
    """
    records = []
    for lineno, line in enumerate(read_lines(path, dataset), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != len(fields):
            raise DatasetError(
                f"{dataset}: {path}, line {lineno}: expected {len(fields)} whitespace-separated fields "
                f"<{'> <'.join(fields)}>, got {len(tokens)}: {line.strip()!r}")
        records.append((lineno, tokens))
    return records


def parse_id(token: str, where: str, dataset: str, what: str, *, junk: int | None = None) -> int:
    """A person or camera id written in ASCII digits 0-9, e.g. '0017' → 17; else a DatasetError.

    int() alone would also take '-3', '+3', ' 3', '1_0' and other scripts' digits ('٣'), each of which
    would become a plausible but wrong id. `junk`: the one negative value the format defines (−1 for
    LS-VID's junk rows), accepted as written. `where` names the file and line (or the folder), `what`
    the field, for the message.
    """
    if junk is not None and token == str(junk):
        return junk
    if token.isascii() and token.isdigit():
        return int(token)
    junk_note = f" (or {junk} for junk)" if junk is not None else ""
    raise DatasetError(f"{dataset}: {where}: {what} must be an integer in ASCII digits 0-9{junk_note}, got {token!r}")


def inside_root(root: str, relative: str, where: str, dataset: str, what: str) -> str:
    """`root`/`relative`, normalised; a DatasetError when `relative` is absolute or climbs out with '..'.

    The check is on the text of the list file, not on resolved links: a dataset folder that is itself a
    symlink, or holds links to frames on another disk, is a layout its owner chose, whereas a list line
    is data that may come from anywhere. The normalised path is what the reader then opens, so a '..'
    after a link cannot reach past what was checked.
    """
    if os.path.isabs(relative):
        raise DatasetError(f"{dataset}: {where}: {what} {relative!r} is an absolute path; expected a path "
                           f"relative to the dataset folder {root}")
    path = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != os.path.normpath(root):
        raise DatasetError(f"{dataset}: {where}: {what} {relative!r} leads out of the dataset folder {root}; "
                           "expected a path inside it")
    return path


def frame_sort_key(name: str) -> tuple[int, int, str]:
    """Temporal order of frame files: by the last integer in the name, numerically.

    Names without any digit sort after the numbered ones, lexicographically; ties (same number)
    are broken by the full name so the order is total and deterministic.
    """
    match = _LAST_INT.search(os.path.splitext(name)[0])
    if match is None:
        return (1, 0, name)
    return (0, int(match.group(1)), name)


# The image files a tracklet folder's frames may be (matched case-insensitively); decode.py reads them all.
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Files list_frames passed over, while a `collect_ignored()` block is open (else None).
_ignored: list[str] | None = None


@contextlib.contextmanager
def collect_ignored():
    """Inside the block, list_frames records every file of a tracklet folder it did not take as a frame
    (a wrong extension); yields that list, so the caller can say what was left out."""
    global _ignored
    outer, _ignored = _ignored, []
    try:
        yield _ignored
    finally:
        collected, _ignored = _ignored, outer
        if outer is not None:
            outer.extend(collected)


def list_frames(folder: str, extensions: Iterable[str] = FRAME_EXTENSIONS) -> list[str]:
    """Absolute paths of the frame files in `folder` (one listdir), in temporal order.

    Extensions match case-insensitively; other files are left out, and recorded inside a
    `collect_ignored()` block. Raises FileNotFoundError / NotADirectoryError like os.scandir; the
    callers turn those into DatasetErrors that name the list line.
    """
    names = frame_names(folder, extensions)
    names.sort(key=frame_sort_key)
    return [os.path.join(folder, n) for n in names]


def frame_names(folder: str, extensions: Iterable[str] = FRAME_EXTENSIONS) -> list[str]:
    """The names (not paths) of the frame files in `folder`, in no particular order; raises like
    `list_frames`, and like it records the other files inside a `collect_ignored()` block."""
    exts = tuple(e.lower() for e in extensions)
    names, others = [], []
    with os.scandir(folder) as entries:
        for e in entries:
            if not e.is_dir():
                (names if e.name.lower().endswith(exts) else others).append(e.name)
    if _ignored is not None:
        _ignored.extend(os.path.join(folder, n) for n in sorted(others))
    return names


def relabel(keys: Iterable) -> dict:
    """Map each distinct key to 0..N-1 in sorted order of the keys."""
    return {k: i for i, k in enumerate(sorted(set(keys)))}


def read_mat_variable(path: str, key: str, dataset: str) -> np.ndarray:
    """Variable `key` of a MATLAB file as a numpy array in MATLAB's (row, column) order.

    v5 files go through scipy, v7.3 (HDF5) files through h5py (transposed back from HDF5's
    column-major storage). Missing file, unreadable file or missing key → DatasetError.
    """
    require_file(path, dataset, f"MATLAB file with variable {key!r}")
    import h5py
    import scipy.io

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise DatasetError(f"{dataset}: {path} has no variable {key!r} (found {sorted(f.keys())})")
                return np.asarray(f[key]).T
        except OSError as e:
            raise DatasetError(f"{dataset}: cannot read {path} as a MATLAB v7.3 file ({e})") from None
    try:
        data = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several unrelated types for a corrupt file
        raise DatasetError(f"{dataset}: cannot read {path} as a MATLAB file ({type(e).__name__}: {e})") from None
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"{dataset}: {path} has no variable {key!r} (found {found})")
    return np.asarray(data[key])


def whole_numbers(array: np.ndarray, path: str, key: str, dataset: str) -> np.ndarray:
    """`array` as int64, or a DatasetError if it holds anything but finite whole numbers."""
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
        raise DatasetError(f"{dataset}: {path}, variable {key!r}: expected numbers, got dtype {array.dtype}")
    ints = array.astype(np.int64)
    if np.any(ints != array):
        raise DatasetError(f"{dataset}: {path}, variable {key!r}: expected whole numbers")
    return ints


def zero_based_rows(idx: np.ndarray, num_rows: int, path: str, key: str, dataset: str, what: str) -> np.ndarray:
    """1-based row numbers `idx` (from a .mat variable) → 0-based, each checked to be in 1..num_rows.

    `what` names the rows in the error, e.g. "a row of track_test_info".
    """
    bad = np.flatnonzero((idx < 1) | (idx > num_rows))
    if bad.size:
        raise DatasetError(f"{dataset}: {path}, variable {key!r}, entry {int(bad[0]) + 1}: {int(idx[bad[0]])} is not "
                           f"{what} (expected 1..{num_rows})")
    return idx - 1
