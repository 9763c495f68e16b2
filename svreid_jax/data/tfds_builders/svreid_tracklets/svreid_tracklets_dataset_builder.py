"""tfds builder `svreid_tracklets`: the tracklets of any registered dataset, packed for streaming.

One record per tracklet, in the reader's order (shuffling disabled, key = index in the split):

    frames:      Sequence of {bytes: the frame file's original bytes (not re-encoded),
                              format: 'jpeg' / 'png' / ... from the file's signature,
                              name: the frame's path relative to the dataset root}
    pid, camid:  int64, as the reader gives them (training pids relabelled)
    clothes_id:  int64, −1 where the reader gives None
    split:       'train' / 'query' / 'gallery';  index: int64, position in the split

Splits the reader leaves empty are not written (tfds refuses empty splits). The dataset's
metadata.json also holds, per split, the pid / camid / clothes_id / num_frames columns, so a reader
can build its Tracklet list without touching the records (`svreid_jax.data.pack.PackedTracklets`),
plus the dataset name, options, root and the reader's counts.

Written with file_format="array_record" and read with `as_data_source`, neither needs TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from svreid_jax.data import datasets

FORMAT_VERSION = 1
SPLITS = ("train", "query", "gallery")
_SIGNATURES = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


def frame_format(data: bytes, path: str) -> str:
    """The image format from the file signature, else the extension without the dot."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return os.path.splitext(path)[1].lstrip(".").lower() or "unknown"


def config_name(dataset: str, options: dict[str, Any]) -> str:
    """A folder-safe config name: the dataset name plus its non-default options, e.g. 'lsvid-cut_length=48'."""
    defaults = datasets.options(dataset)
    parts = [dataset] + [f"{k}={options[k]}" for k in sorted(options) if options[k] != defaults.get(k)]
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", "-".join(parts))


class Builder(tfds.core.GeneratorBasedBuilder):
    """Packs `datasets.load(dataset, root, **options)`; construct with those (see pack.pack)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One record per tracklet: original frame bytes, pid, camid, clothes_id, split."}

    # tfds looks for a checksums file beside the builder's code through importlib_resources, which
    # this environment lacks; there is nothing to download, so there are no checksums.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def __init__(self, *, dataset: str, root: str, options: dict[str, Any] | None = None, **kwargs):
        self._dataset = dataset
        self._root = os.path.abspath(os.path.expanduser(root))
        self._options = dict(options or {})
        kwargs.setdefault("config", tfds.core.BuilderConfig(
            name=config_name(dataset, self._options),
            description=f"{dataset} with options {self._options or 'none'}"))
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "frames": tfds.features.Sequence({
                    "bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "format": text,
                    "name": text,
                }),
                "pid": np.int64,
                "camid": np.int64,
                "clothes_id": np.int64,
                "split": text,
                "index": np.int64,
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        splits, stats = datasets.load_with_stats(self._dataset, self._root, **self._options)
        columns = {}
        for split in SPLITS:
            tracklets = getattr(splits, split)
            if tracklets:
                columns[split] = {
                    "pid": [t.pid for t in tracklets],
                    "camid": [t.camid for t in tracklets],
                    "clothes_id": [-1 if t.clothes_id is None else t.clothes_id for t in tracklets],
                    "num_frames": [len(t) for t in tracklets],
                }
        self.info.metadata.update({
            "format_version": FORMAT_VERSION,
            "dataset": self._dataset,
            "options": self._options,
            "root": self._root,
            "reader_counts": dataclasses.asdict(stats) if stats is not None else None,
            "splits": columns,
        })
        return {split: self._generate_examples(split, getattr(splits, split)) for split in columns}

    def _generate_examples(self, split, tracklets):
        for index, tracklet in enumerate(tracklets):
            frames = []
            for path in tracklet.frames:
                with open(path, "rb") as f:
                    data = f.read()
                frames.append({"bytes": data, "format": frame_format(data, path),
                               "name": os.path.relpath(path, self._root)})
            yield index, {
                "frames": frames,
                "pid": tracklet.pid,
                "camid": tracklet.camid,
                "clothes_id": -1 if tracklet.clothes_id is None else tracklet.clothes_id,
                "split": split,
                "index": index,
            }
