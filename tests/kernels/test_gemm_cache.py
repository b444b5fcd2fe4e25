"""The GEMM tuning cache file: each put leaves valid JSON, fsynced before and after the rename."""

from __future__ import annotations

import json
import os
import stat

from axon.kernels import gemm_cache
from axon.kernels.gemm_cache import FORMAT, GemmCache

ENTRY = {"best": "TN", "candidates": {"NN": 2.0e-5, "TN": 1.5e-5}}


def test_put_writes_valid_json_fsynced_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "tuning" / "gemm.json"
    synced = []  # (what was fsynced, whether the cache file existed yet)

    def fsync(fd):
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, path.exists()))

    monkeypatch.setattr(gemm_cache.os, "fsync", fsync)
    GemmCache(path).put("k1", ENTRY)
    assert synced == [("file", False), ("directory", True)]  # the data before the rename, the rename after
    assert json.loads(path.read_text()) == {"format": FORMAT, "entries": {"k1": ENTRY}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["gemm.json"]  # no temporary file left

    # another process's cache merges what is on disk with its own entry
    other = GemmCache(path)
    other.entries.pop("k1")
    other.put("k2", {"best": "NN", "candidates": {"NN": 1.0e-5}})
    assert json.loads(path.read_text())["entries"] == {"k1": ENTRY, "k2": {"best": "NN", "candidates": {"NN": 1.0e-5}}}
    assert GemmCache(path).get("k1") == ENTRY
