"""utils/atomic: a failed write leaves the previous file whole and no temporary file visible."""
import errno
import json
import os

import pytest

from svreid_jax.utils import atomic


def test_write_json_replaces_and_round_trips(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(str(path), {"r1": 0.5})
    atomic.write_json(str(path), {"r1": 0.75, "name": "é"}, ensure_ascii=False)
    assert json.loads(path.read_text(encoding="utf-8")) == {"r1": 0.75, "name": "é"}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_unserialisable_value_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(str(path), {"r1": 0.5})
    with pytest.raises(TypeError):
        atomic.write_json(str(path), {"r1": object()})
    assert json.loads(path.read_text()) == {"r1": 0.5}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic.write_text(str(path), "old\n")
    real_fsync = os.fsync

    def full_disk(fd):  # the write "succeeds" into the page cache, the flush to disk fails
        if os.fstat(fd).st_size:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.write_text(str(path), "new text that does not fit\n")
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_keeps_permissions_of_the_replaced_file(tmp_path):
    path = tmp_path / "table.md"
    atomic.write_text(str(path), "a")
    os.chmod(path, 0o640)
    atomic.write_text(str(path), "b")
    assert path.read_text() == "b" and (os.stat(path).st_mode & 0o777) == 0o640
