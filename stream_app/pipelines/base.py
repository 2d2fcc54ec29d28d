"""What every pipeline takes and gives: received records, output records, a mapping-like state store."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Generic, NamedTuple, Protocol, TypeVar

from aiokafka.partitioner import murmur2

__all__ = ["Received", "Record", "StateStore", "epoch_ms", "partition_of"]

T = TypeVar("T")

# An output record: (key, value) bytes for one topic.
Record = tuple[bytes, bytes]


class Received(NamedTuple, Generic[T]):
    """A decoded input record with the Kafka facts a pipeline uses, as plain values."""

    value: T
    timestamp: float  # the record's Kafka timestamp, in seconds
    partition: int
    offset: int = -1  # the record's offset in its partition (-1 where the caller does not know it)


class StateStore(Protocol):
    """Per-key state as bytes: a dict in tests, a changelogged table in a worker."""

    # Positional, one argument: how the pipelines call it, and a signature a dict[bytes, bytes] matches.
    def get(self, key: bytes, /) -> bytes | None: ...

    def __setitem__(self, key: bytes, value: bytes) -> None: ...

    def __delitem__(self, key: bytes) -> None: ...

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...


def epoch_ms(ts: int | str) -> int:
    """A decoded record's ``ts``: typed int | str for what producers send, epoch ms once the record is built."""
    if isinstance(ts, str):
        raise TypeError(f"ts {ts!r} was not converted to epoch ms: build records with the schemas' decoders or "
                        "constructors, which convert it")
    return ts


@lru_cache(maxsize=200_000)  # a pure function of its arguments: the cache only saves the hash
def partition_of(key: bytes, n_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, as the Java client)."""
    return int((murmur2(key) & 0x7FFFFFFF) % n_partitions)

