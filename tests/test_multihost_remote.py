"""The parts a shard composed from staging objects is uploaded in (`_multihost_remote.plan_parts`)."""

from __future__ import annotations

import numpy as np

from ckptschema import _multihost_remote
from ckptschema._multihost_remote import MIN_PART, _Segments, plan_parts

MiB = 1 << 20


def segments(*lengths_and_owners: tuple[int, int]) -> _Segments:
    lengths = np.array([n for n, _ in lengths_and_owners], np.int64)
    ends = np.cumsum(lengths)
    owners = np.array([p for _, p in lengths_and_owners], np.int64)
    return _Segments(ends - lengths, ends, owners, 2)


def check_parts(found: _Segments, parts: list[tuple[str, int, int]]) -> None:
    """Parts cover the shard in order, every one but the last holds MIN_PART, and copies lie in one range."""
    assert [start for _, start, _ in parts] == [0] + [end for _, _, end in parts[:-1]]
    assert parts[-1][2] == found.size
    assert all(end - start >= MIN_PART for _, start, end in parts[:-1])
    for kind, start, end in parts:
        if kind == "copy":
            at = int(np.searchsorted(found.starts, start, side="right")) - 1
            assert end <= found.ends[at]


def test_long_ranges_are_copied_and_short_ones_sent_topped_up_to_the_least_part_size():
    found = segments((100, 0), (12 * MiB, 1), *[(96, p % 2) for p in range(1000)], (12 * MiB, 0), (96, 1))
    parts = plan_parts(found)
    check_parts(found, parts)
    assert [kind for kind, *_ in parts] == ["data", "copy", "data", "copy", "data"]
    assert parts[0] == ("data", 0, MIN_PART)  # the header, and what the first range lends it


def test_a_range_too_short_after_lending_is_sent_whole_as_data():
    found = segments((100, 0), (5 * MiB + 50, 1), (3 * MiB, 0))
    parts = plan_parts(found)
    check_parts(found, parts)
    assert [kind for kind, *_ in parts] == ["data"]


def test_a_range_longer_than_a_copy_part_is_copied_in_several_parts(monkeypatch):
    monkeypatch.setattr(_multihost_remote, "COPY_PART", 8 * MiB)
    found = segments((20 * MiB, 1), (10, 0))
    parts = plan_parts(found)
    check_parts(found, parts)
    assert [kind for kind, *_ in parts] == ["copy", "copy", "copy", "data"]


def test_many_short_ranges_are_sent_in_data_parts_of_bounded_size():
    found = segments(*[(MiB, p % 2) for p in range(40)])
    parts = plan_parts(found)
    check_parts(found, parts)
    assert {kind for kind, *_ in parts} == {"data"}
    assert max(end - start for _, start, end in parts) == _multihost_remote.DATA_PART
