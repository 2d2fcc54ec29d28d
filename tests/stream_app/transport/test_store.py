"""Partition stores: writes are tracked for the changelog, restores are not; routing never splits a key."""

from __future__ import annotations

import pytest

from stream_app.transport.exceptions import NotLocalError
from stream_app.transport.partitioning import partition_of
from stream_app.transport.store import PartitionStore, RoutedStore


def test_changes_are_the_dirty_keys_with_tombstones_for_deletions() -> None:
    store = PartitionStore("s", 0)
    store[b"a"] = b"1"
    store[b"b"] = b"2"
    store[b"a"] = b"3"
    del store[b"b"]

    assert sorted(store.take_changes(), key=lambda c: c[0]) == [(b"a", b"3"), (b"b", None)]
    assert store.take_changes() == [], "taking the changes clears them"
    assert dict(store.items()) == {b"a": b"3"}


def test_restored_records_are_not_changes() -> None:
    store = PartitionStore("s", 0)
    store.load(b"a", b"1")
    store.load(b"b", b"2")
    store.load(b"b", None)

    assert dict(store.items()) == {b"a": b"1"}
    assert store.dirty_count == 0


def test_marked_keys_are_rewritten_even_when_absent() -> None:
    store = PartitionStore("s", 0, {b"a": b"1"})
    store.mark_dirty([b"a", b"gone"])

    assert sorted(store.take_changes(), key=lambda c: c[0]) == [(b"a", b"1"), (b"gone", None)]


def test_routed_store_sends_each_key_to_its_partition() -> None:
    stores = {p: PartitionStore("s", p) for p in range(4)}
    routed = RoutedStore("s", stores, 4)
    keys = [f"user-{i}".encode() for i in range(100)]

    for key in keys:
        routed[key] = key
    for key in keys:
        assert stores[partition_of(key, 4)].get(key) == key
        assert routed.get(key) == key
    assert len(routed) == 100
    assert sorted(k for k, _ in routed.items()) == sorted(keys)


def test_routed_store_refuses_a_key_owned_elsewhere() -> None:
    key = next(f"user-{i}".encode() for i in range(1000) if partition_of(f"user-{i}".encode(), 4) == 2)
    routed = RoutedStore("s", {0: PartitionStore("s", 0)}, 4)

    with pytest.raises(NotLocalError, match="partition 2"):
        routed[key] = b"x"
    with pytest.raises(NotLocalError):
        routed.get(key)


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    # Values from the Java client's Utils.murmur2 (toPositive(murmur2(key)) % n) for these keys.
    assert [partition_of(k, 1000) for k in (b"21", b"foobar", b"a-little-bit-long-string")] == \
        [(-973932308 & 0x7FFFFFFF) % 1000, (-790332482 & 0x7FFFFFFF) % 1000, (-985981536 & 0x7FFFFFFF) % 1000]
