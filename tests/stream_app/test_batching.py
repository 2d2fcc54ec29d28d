"""Rounds: each key once per round, each key's items in their original order."""

from __future__ import annotations

from hypothesis import given, strategies as st

from stream_app.batching import group_into_rounds


def test_kth_event_of_a_user_goes_in_round_k():
    items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)]
    rounds = group_into_rounds(items, key=lambda item: item[0])
    assert rounds == [[("a", 1), ("b", 1), ("c", 1)], [("a", 2), ("b", 2)], [("a", 3)]]


def test_empty_batch_has_no_rounds():
    assert group_into_rounds([], key=lambda item: item) == []


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers())))
def test_rounds_keep_every_item_once_and_per_key_order(items):
    rounds = group_into_rounds(items, key=lambda item: item[0])
    assert sorted(x for r in rounds for x in r) == sorted(items)
    for r in rounds:
        assert len({k for k, _ in r}) == len(r), "a key appears at most once per round"
    for key in {k for k, _ in items}:
        flattened = [x for r in rounds for x in r if x[0] == key]
        assert flattened == [x for x in items if x[0] == key]
