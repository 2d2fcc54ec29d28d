"""Micro-batch grouping: a key's k-th event of the batch goes in round k (order kept per key)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

__all__ = ["group_into_rounds"]

T = TypeVar("T")


def group_into_rounds(items: Iterable[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """Split ``items`` into rounds in which every key appears at most once.

    Round ``k`` holds each key's ``k``-th item, so applying the rounds in order applies every key's
    items in their original order, and each round is one batched model step over distinct keys.
    """
    rounds: list[list[T]] = []
    seen: dict[Hashable, int] = {}
    for item in items:
        k = key(item)
        index = seen.get(k, 0)
        seen[k] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return rounds
