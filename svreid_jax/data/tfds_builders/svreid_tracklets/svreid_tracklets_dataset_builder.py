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

Written with file_format="array_record" (by `Builder.write_streaming`, one record at a time) and read with
`as_data_source`, neither needs TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from svreid_jax.data import datasets, decode
from svreid_jax.utils import atomic

FORMAT_VERSION = 1
SHARD_BYTES = 128 << 20  # a shard is closed once its serialized records pass this size (bounds memory too)
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
                data = decode.read_frame_bytes(path)  # a missing or unreadable frame: FrameError naming it
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

    def read_dataset(self) -> dict:
        """Read and check the dataset (reader errors raise here) and fill info.metadata; returns the split
        generators that `write_streaming` takes. Nothing is written."""
        return self._split_generators(None)

    def write_streaming(self, generators: dict | None = None) -> str:
        """Write the packing (shards, dataset_info.json, features.json, metadata.json) into `self.data_dir`
        and return that directory: what `download_and_prepare` writes, read back by the same
        `tfds.builder_from_directory(...).as_data_source(split)`. `generators`: from `read_dataset`
        (read here when not given, before any folder is made).

        Why not `download_and_prepare`: tfds's writer keeps a split's serialized records in memory up to
        1 GiB and then spills them through `tf.io.gfile`, i.e. TensorFlow; a full LS-VID index (2.8 M frame
        records) crossed that line (benchmarks/scale.py) and real frames would at MARS size too. Here each
        record goes straight to an array_record shard, at most SHARD_BYTES are held, and the folder appears
        only complete: written into a hidden staging folder beside it that replaces it at the end
        (utils/atomic.replaced_directory), so a failure leaves the previous packing, if any, in place.
        """
        directory = os.fspath(self.data_dir)
        if generators is None:
            generators = self.read_dataset()
        with atomic.replaced_directory(directory) as staging:
            self._write_into(staging, directory, generators)
        return directory

    def _write_into(self, staging: str, directory: str, generators: dict) -> None:
        from etils import epath
        from tensorflow_datasets.core import example_serializer, file_adapters, naming
        from tensorflow_datasets.core import splits as splits_lib

        features = self.info.features
        serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
        file_format = file_adapters.FileFormat.ARRAY_RECORD
        adapter = file_adapters.ADAPTER_FOR_FORMAT[file_format]
        infos = []
        for split, examples in generators.items():
            parts, lengths, total, records, size = [], [], 0, [], 0

            def flush():
                path = os.path.join(staging, f"{split}.part{len(parts)}")
                adapter.write_examples(path, ((None, r) for r in records))
                parts.append(path)
                lengths.append(len(records))

            for _, example in examples:
                data = serializer.serialize_example(features.encode_example(example))
                records.append(data)
                size += len(data)
                total += len(data)
                if size >= SHARD_BYTES:
                    flush()
                    records, size = [], 0
            if records:
                flush()
            template = naming.ShardedFileTemplate(
                data_dir=epath.Path(directory), template=naming.DEFAULT_FILENAME_TEMPLATE, dataset_name=self.name,
                split=split, filetype_suffix=file_format.file_suffix)
            for part, final in zip(parts, template.sharded_filepaths(len(parts))):
                os.replace(part, os.path.join(staging, final.name))
            infos.append(splits_lib.SplitInfo(name=split, shard_lengths=lengths, num_bytes=total,
                                              filename_template=template))
        # override_if_initialized: with --overwrite, tfds has restored the info of the packing being replaced.
        self.info.set_file_format(file_format, override=True, override_if_initialized=True)
        self.info.set_splits(splits_lib.SplitDict(infos))
        self.info.write_to_directory(staging)
