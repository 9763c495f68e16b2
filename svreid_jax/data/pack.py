"""Pack a dataset into array_record shards (tensorflow-datasets, no TensorFlow) and read it back.

  python -m svreid_jax.data.pack --dataset=NAME --root=DIR --out=DIR [--split_id=K] [--option key=value ...]
                                 [--overwrite]

writes `<out>/svreid_tracklets/<config>/1.0.0/` (config = the dataset name plus its non-default
options, e.g. `lsvid-cut_length=48`) through the tfds builder in
`svreid_jax/data/tfds_builders/svreid_tracklets/`: one record per tracklet holding the frame
files' original bytes (PNG stays PNG, nothing is re-encoded), their format, pid, camid, clothes_id
and split. It prints that directory.

Reading back: `load_packed(directory)` gives DatasetSplits whose splits are `PackedTracklets`:
sequences of `Tracklet` (pid, camid, clothes_id and length from the dataset's metadata, no record
read) whose frames are references 'packed://<split>/<index>/<frame>', not files. Pass a
PackedTracklets itself (or a slice of it) to `pipeline.source_stream / target_stream /
eval_clips`: clips then decode from the stored bytes with the same PIL code as from folders, so
the pixels, and for the same seed the batches, are identical.

The dataset is read and checked before any output folder is created; `--out` inside `--root` (or
`--root` inside `--out`) is refused; a packing replaces the previous one only once it is complete
(`--overwrite` that fails leaves the old packing in place).

Nothing here imports tensorflow_datasets until packing or the first frame read.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from svreid_jax.data import decode
from svreid_jax.data.records import DatasetSplits, FrameError, Tracklet

BUILDER_NAME = "svreid_tracklets"
USAGE = ("python -m svreid_jax.data.pack --dataset=NAME --root=DIR --out=DIR [--split_id=K] "
         "[--option key=value ...] [--overwrite]")
_SPLITS = ("train", "query", "gallery")


def pack(dataset: str, root: str, out: str, options: dict[str, Any] | None = None, *,
         overwrite: bool = False, progress: bool = True) -> str:
    """Pack `datasets.load(dataset, root, **options)` under `out`; returns the dataset directory.

    An existing complete packing of the same dataset, options and root is reused unless `overwrite`
    (one from another root → ValueError). `out` inside `root` (the packing would become part of the
    dataset it packs) or `root` inside `out` → ValueError. The dataset's lists are read and checked
    (DatasetError, ValueError) before any folder is created; the packing is then written into a
    staging folder that replaces the directory only when complete, so a failed or interrupted
    `overwrite` leaves the previous packing as it was.
    """
    import tensorflow_datasets as tfds

    from svreid_jax.data import datasets
    from svreid_jax.data.tfds_builders.svreid_tracklets import Builder

    options = dict(options or {})
    datasets.options(dataset)  # unknown name → ValueError before anything else
    root_path = os.path.abspath(os.path.expanduser(root))
    out_path = os.path.abspath(os.path.expanduser(out))
    check_apart(root_path, out_path)
    if not progress:
        tfds.disable_progress_bar()
    builder = Builder(dataset=dataset, root=root_path, options=options, data_dir=out_path,
                      file_format="array_record")
    directory = os.fspath(builder.data_dir)
    if not overwrite and os.path.isfile(os.path.join(directory, "dataset_info.json")):
        packed_root = _read_metadata(directory).get("root")
        if packed_root != root_path:
            raise ValueError(f"{directory} already holds {dataset} packed from {packed_root}, not {root_path}; "
                             "choose another output folder or pack again with overwrite")
        logging.warning("%s already holds this packing of %s; reusing it (overwrite packs again)", directory, dataset)
        return directory
    logging.info("packing %s from %s into %s", dataset, root_path, directory)
    generators = builder.read_dataset()  # every reader error surfaces here, before any folder exists
    created = [d for d in _ancestors(directory, out_path) if not os.path.exists(d)]
    try:
        return builder.write_streaming(generators)
    except BaseException:
        for folder in reversed(created):  # the empty folders this call made on the way to `directory`
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _ancestors(directory: str, top: str) -> list[str]:
    """`top` and the folders below it down to `directory`'s parent, outermost first."""
    chain, folder = [], os.path.dirname(directory)
    while True:
        chain.append(folder)
        if folder == top or os.path.dirname(folder) == folder:
            return chain[::-1]
        folder = os.path.dirname(folder)


def check_apart(root: str, out: str) -> None:
    """ValueError when the output folder and the dataset root are the same or one holds the other, as
    written or once links are resolved: a packing inside the dataset would be read as part of it."""
    def within(inner: str, outer: str) -> bool:
        return os.path.commonpath([inner, outer]) == outer

    for r, o in ((root, out), (os.path.realpath(root), os.path.realpath(out))):
        if within(o, r):
            raise ValueError(f"the output folder (--out) {out} is inside the dataset root (--root) {root}; the "
                             "packing would become part of the dataset: choose an output folder outside it")
        if within(r, o):
            raise ValueError(f"the dataset root (--root) {root} is inside the output folder (--out) {out}; "
                             "choose an output folder that does not hold the dataset")


def find_packed(directory: str) -> str:
    """The packed dataset directory (the one holding dataset_info.json) at or below `directory`.

    Several packings below `directory` → ValueError listing them; none → FileNotFoundError.
    """
    directory = os.path.abspath(os.path.expanduser(directory))
    if os.path.isfile(os.path.join(directory, "dataset_info.json")):
        return directory
    found = []
    for dirpath, dirnames, files in os.walk(directory):
        # Hidden folders are staging or set-aside copies of a replacement in progress (utils/atomic.py).
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if "dataset_info.json" in files and "incomplete" not in os.path.basename(dirpath):
            found.append(dirpath)
    found.sort()
    if not found:
        raise FileNotFoundError(f"no packed dataset (dataset_info.json) at or below {directory}; "
                                f"create one with: {USAGE}")
    if len(found) > 1:
        raise ValueError(f"{directory} holds several packed datasets; name one of: {', '.join(found)}")
    return found[0]


def _read_metadata(directory: str) -> dict:
    path = os.path.join(directory, "metadata.json")
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{directory} is not a dataset packed by svreid_jax.data.pack: cannot read "
                                f"{path} ({e})") from None
    if metadata.get("format_version") != 1 or "splits" not in metadata:
        raise ValueError(f"{path}: unknown packing format {metadata.get('format_version')!r}; "
                         "pack the dataset again with this version")
    return metadata


class _Shards:
    """The array_record data sources of one packed dataset, opened on first use, shared by views."""

    def __init__(self, directory: str):
        self.directory = directory
        self._sources: dict[str, Any] = {}
        self._lock = threading.Lock()

    def source(self, split: str):
        with self._lock:
            src = self._sources.get(split)
            if src is None:
                import tensorflow_datasets as tfds

                src = tfds.builder_from_directory(self.directory).as_data_source(split)
                self._sources[split] = src
            return src

    def __getstate__(self):  # for grain worker processes: reopen there
        return {"directory": self.directory}

    def __setstate__(self, state):
        self.__init__(state["directory"])


class PackedTracklets(Sequence):
    """One split of a packed dataset: a sequence of `Tracklet` whose frames decode from stored bytes.

    tracklets[i] is a Tracklet (from the metadata; frames are 'packed://…' references);
    frame_bytes(i, k) is the original file content of frame k of tracklet i; load_clip(i, indices,
    height, width, flip, decoder=, draft=) decodes like `decode.load_clip` does from files. Slicing gives a view
    that keeps reading the same shards.
    """

    def __init__(self, directory: str, split: str):
        if split not in _SPLITS:
            raise ValueError(f"split={split!r}; expected one of {', '.join(_SPLITS)}")
        directory = find_packed(directory)
        columns = _read_metadata(directory)["splits"].get(split)
        self._init(_Shards(directory), split, columns)

    def _init(self, shards: _Shards, split: str, columns: dict | None) -> None:
        self._shards = shards
        self.split = split
        if columns is None:  # the reader left this split empty
            self._rows: tuple[int, ...] = ()
            self._tracklets: tuple[Tracklet, ...] = ()
            return
        self._rows = tuple(range(len(columns["pid"])))
        self._tracklets = tuple(
            Tracklet(frames=tuple(f"packed://{split}/{i}/{k}" for k in range(n)), pid=int(pid), camid=int(camid),
                     clothes_id=None if clothes < 0 else int(clothes))
            for i, (pid, camid, clothes, n) in enumerate(zip(columns["pid"], columns["camid"], columns["clothes_id"],
                                                              columns["num_frames"])))

    @classmethod
    def _view(cls, shards: _Shards, split: str, rows: tuple[int, ...], tracklets: tuple[Tracklet, ...]):
        view = cls.__new__(cls)
        view._shards, view.split, view._rows, view._tracklets = shards, split, rows, tracklets
        return view

    @property
    def directory(self) -> str:
        return self._shards.directory

    def __len__(self) -> int:
        return len(self._tracklets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return PackedTracklets._view(self._shards, self.split, self._rows[index], self._tracklets[index])
        return self._tracklets[index]

    def __repr__(self) -> str:
        return f"PackedTracklets({self.directory!r}, {self.split!r}, {len(self)} tracklets)"

    def record(self, index: int) -> dict:
        """The stored record of tracklet `index` (all its frames' bytes)."""
        row = self._rows[index]
        record = self._shards.source(self.split)[row]
        if int(record["index"]) != row:
            raise ValueError(f"{self.directory}: record {row} of split {self.split!r} holds index "
                             f"{int(record['index'])}; the packing is damaged")
        return record

    def frame_bytes(self, index: int, frame: int) -> bytes:
        """The original file bytes of frame `frame` of tracklet `index`."""
        return self.record(index)["frames"]["bytes"][frame]

    def load_clip(self, index: int, frame_indices: Sequence[int], height: int, width: int,
                  flip: bool, *, decoder: str = "auto", draft: bool = False,
                  out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [T, height, width, 3]: `decode.load_clip` on the stored bytes of the selected frames."""
        frames = self.record(index)["frames"]
        try:
            return decode.load_clip(frames["bytes"], frame_indices, height, width, flip,
                                        decoder=decoder, draft=draft, out=out)
        except OSError as e:
            raise FrameError(f"cannot decode a frame of packed tracklet {index} of split {self.split!r} in "
                             f"{self.directory} (frames {[n.decode() for n in frames['name'][:3]]}…): {e}",
                             self.directory) from None


class JoinedTracklets(Sequence):
    """Two tracklet sequences read as one (evaluation extracts query ∪ gallery in one pass), each part
    decoding its own way: packed parts from their stored bytes, folder parts from their files."""

    def __init__(self, first: Sequence[Tracklet], second: Sequence[Tracklet]):
        self._parts = (first, second)

    def __len__(self) -> int:
        return len(self._parts[0]) + len(self._parts[1])

    def _locate(self, index: int) -> tuple[Sequence[Tracklet], int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"tracklet {index} of {len(self)}")
        index %= len(self)
        first = self._parts[0]
        return (first, index) if index < len(first) else (self._parts[1], index - len(first))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        part, local = self._locate(index)
        return part[local]

    def load_clip(self, index: int, frame_indices: Sequence[int], height: int, width: int, flip: bool, *,
                  decoder: str = "auto", draft: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [T, height, width, 3] of tracklet `index`, decoded as its part stores it."""
        part, local = self._locate(index)
        if isinstance(part, PackedTracklets):
            return part.load_clip(local, frame_indices, height, width, flip, decoder=decoder, draft=draft, out=out)
        return decode.load_clip(part[local].frames, frame_indices, height, width, flip, decoder=decoder,
                                draft=draft, out=out)


def join(first: Sequence[Tracklet], second: Sequence[Tracklet]) -> Sequence[Tracklet]:
    """`first` then `second` as one sequence the pipeline can decode: a plain tuple for folder data,
    JoinedTracklets when either part is packed (a tuple of packed Tracklets would lose their bytes)."""
    if isinstance(first, PackedTracklets) or isinstance(second, PackedTracklets):
        return JoinedTracklets(first, second)
    return tuple(first) + tuple(second)


def load_packed(directory: str) -> DatasetSplits:
    """The three splits of a packed dataset as PackedTracklets (see the module docstring)."""
    directory = find_packed(directory)
    columns = _read_metadata(directory)["splits"]
    shards = _Shards(directory)  # one set of open shards for the three splits
    splits = {}
    for split in _SPLITS:
        splits[split] = PackedTracklets.__new__(PackedTracklets)
        splits[split]._init(shards, split, columns.get(split))
    return DatasetSplits(**splits)


def packed_info(directory: str) -> dict:
    """The packing's metadata: dataset, options, root, reader_counts, per-split columns."""
    return _read_metadata(find_packed(directory))


def main(argv: Sequence[str]) -> int:
    """Command line entry point; argv[0] is the program name. Returns the exit code."""
    from absl import flags

    from svreid_jax.data import check
    from svreid_jax.data.records import DatasetError

    fv = check.define_flags(flags.FlagValues())
    flags.DEFINE_string("out", None, "Folder to write the packed dataset under.", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Pack again even if this dataset and options are already packed.",
                         flag_values=fv)
    code = check.parse_flags(fv, argv, USAGE)
    if code is not None:
        return code
    if fv.out is None:
        print(f"error: --out must be given\nusage: {USAGE}", file=sys.stderr)
        return 2
    try:
        options = check.reader_options(fv.option, fv.split_id)
        directory = pack(fv.dataset, fv.root, fv.out, options, overwrite=fv.overwrite)
    except (DatasetError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = {s: len(PackedTracklets(directory, s)) for s in _SPLITS}
    print(f"packed {fv.dataset} ({', '.join(f'{s}: {n} tracklets' for s, n in counts.items())}) to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
