"""Progress bars: wrapped sources and files behave exactly like what they wrap."""

from __future__ import annotations

import numpy as np

import ckptschema
from ckptschema import _progress, _shards


def test_a_tracked_sharded_source_still_names_the_shard_of_an_offset(tmp_path):
    tree = {"a": np.zeros(16, np.float32), "b": np.ones(16, np.float32)}
    ckptschema.save(tmp_path / "ckpt", tree, max_shard_size=64)
    source, header = _shards.open_sharded(tmp_path / "ckpt")
    seen = []
    try:
        tracked = _progress._ReadingSource(source, seen.append)
        name, offset = tracked.locate(header.entries["b"].start)
        assert (name.rsplit("/", 1)[1][:20], offset) == ("model-00002-of-00002", 64)
    finally:
        source.close()
