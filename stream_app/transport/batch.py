"""What the transport hands a pipeline per batch, and the contracts of the caller's functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from aiokafka.structs import ConsumerRecord

from stream_app.transport.exceptions import NotLocalError
from stream_app.transport.store import PartitionStore, RoutedStore

__all__ = ["Batch", "State", "BatchDecoder", "Processor", "Punctuator", "Outputs", "PartitionListener", "per_record"]

T = TypeVar("T")

#: Decodes one partition's fetched records at once; returns, aligned with its input, either the
#: decoded record or a rejection (``schemas.Rejection`` or ``transport.Rejected``). Never raises
#: for bad bytes: a raise is treated as a bug, and the records are then decoded one at a time.
BatchDecoder = Callable[[Sequence[ConsumerRecord]], Sequence[Any]]

#: What a pipeline call returns: output topic -> (key, value) records, in the order to write them.
Outputs = Mapping[str, Iterable[tuple[bytes | None, bytes | None]]]


class State:
    """The stores a batch may read and write: one partition's, or all owned partitions' routed by key."""

    __slots__ = ("_stores", "_default", "_n_partitions", "_routed")

    def __init__(self, stores: Mapping[str, Mapping[int, PartitionStore]], default: str, n_partitions: int) -> None:
        self._stores = stores
        self._default = default
        self._n_partitions = n_partitions
        self._routed: dict[str, RoutedStore] = {}

    def store(self, partition: int, name: str | None = None) -> PartitionStore:
        """The store ``name`` (default: the first configured) of one owned partition."""
        stores = self._stores[name or self._default]
        try:
            return stores[partition]
        except KeyError:
            raise NotLocalError(f"store {name or self._default!r}: partition {partition} is not owned here "
                                f"(owned: {sorted(stores)})") from None

    def routed(self, name: str | None = None) -> RoutedStore:
        """A view of every owned partition of ``name`` that finds each key's partition itself."""
        name = name or self._default
        view = self._routed.get(name)
        if view is None:
            view = self._routed[name] = RoutedStore(name, self._stores[name], self._n_partitions)
        return view


class Batch(NamedTuple, Generic[T]):
    """One call's input: decoded valid records per input partition (offset order) and the state."""

    records: Mapping[int, Sequence[T]]
    state: State


#: The pipeline: one call per batch, outputs per topic; state changes go through ``batch.state``.
Processor = Callable[[Batch[T]], Outputs]

#: A wall-clock timer (Kafka Streams' punctuator): called at most once per ``punctuate_interval_s``
#: with ready partitions (all of them, or one per call in ``exactly_once``), also when no record came;
#: its outputs are written like a batch's and its state changes flushed by the next checkpoint.
Punctuator = Callable[[frozenset[int], State], Outputs]


class PartitionListener(Protocol):
    """Optional hooks for a pipeline that caches decoded state between batches."""

    def on_assigned(self, partitions: frozenset[int]) -> None:
        """These partitions' stores were (re)loaded: forget anything cached from them before."""

    def on_revoked(self, partitions: frozenset[int]) -> None:
        """These partitions' stores are gone from this worker."""


def per_record(decode: Callable[[bytes | None], Any]) -> BatchDecoder:
    """A batch decoder from a one-payload decoder (``schemas.decode_user_event`` and the like)."""

    def decode_batch(records: Sequence[ConsumerRecord]) -> list[Any]:
        return [decode(record.value) for record in records]

    return decode_batch
