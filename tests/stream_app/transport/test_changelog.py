"""Commit marks and the restore rule: apply records before the mark, rewrite keys orphaned past it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.structs import TopicPartition

from stream_app.transport.changelog import RestorePlan, _apply, _finish, decode_mark, encode_mark
from stream_app.transport.store import PartitionStore


def test_mark_round_trip() -> None:
    assert decode_mark(encode_mark({"users": 120, "markov": 7})) == {"users": 120, "markov": 7}


@pytest.mark.parametrize("metadata", ["", None, "faust", "{}", '{"v":2,"changelog":{"a":1}}', '{"v":1}', "[1]"])
def test_foreign_or_missing_metadata_is_no_mark(metadata) -> None:
    assert decode_mark(metadata) is None


def _records(*entries):
    return [SimpleNamespace(offset=offset, key=key, value=value) for offset, key, value in entries]


def _plan(mark, store=None):
    return RestorePlan(store or PartitionStore("s", 0), TopicPartition("c", 0), 0, mark)


def test_records_past_the_mark_are_orphans_rewritten_with_the_committed_value() -> None:
    plan = _plan(mark=3)
    orphans: set[bytes] = set()
    _apply(plan, _records((0, b"a", b"1"), (1, b"b", b"1"), (2, b"a", b"2"),
                          (3, b"a", b"9"), (4, b"c", b"9"), (5, b"b", None)), orphans)
    _finish(plan, end=6, orphans=orphans)

    store = plan.store
    assert dict(store.items()) == {b"a": b"2", b"b": b"1"}, "state as of the mark"
    assert store.changelog_end == 3, "the store equals the changelog up to the mark, not its end"
    assert sorted(store.take_changes(), key=lambda c: c[0]) == [(b"a", b"2"), (b"b", b"1"), (b"c", None)]


def test_without_a_mark_everything_is_applied() -> None:
    plan = _plan(mark=None)
    orphans: set[bytes] = set()
    _apply(plan, _records((0, b"a", b"1"), (1, b"a", None), (2, b"b", b"2")), orphans)
    _finish(plan, end=3, orphans=orphans)

    assert dict(plan.store.items()) == {b"b": b"2"}
    assert plan.store.changelog_end == 3
    assert plan.store.dirty_count == 0


def test_nothing_committed_means_every_changelog_record_is_orphaned() -> None:
    plan = _plan(mark=0)
    orphans: set[bytes] = set()
    _apply(plan, _records((0, b"a", b"1"), (1, b"b", b"2")), orphans)
    _finish(plan, end=2, orphans=orphans)

    assert dict(plan.store.items()) == {}
    assert sorted(plan.store.take_changes()) == [(b"a", None), (b"b", None)]
