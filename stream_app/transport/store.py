"""Per-partition state stores: an in-memory dict with a dirty set, flushed to a changelog at checkpoint.

A pipeline sees the ``StateStore`` protocol (``get``, ``[key] = value``, ``del``, ``items``) with bytes
keys and values. ``PartitionStore`` holds one partition of one named store; ``RoutedStore`` is a view
over every partition this worker owns that sends each key to the partition it hashes to, as a
Faust table does, so a pipeline that keys its state by the input key needs no partition numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from stream_app.transport.exceptions import NotLocalError
from stream_app.transport.partitioning import partition_of

__all__ = ["PartitionStore", "RoutedStore", "StoreChange"]

#: One changed key at checkpoint: its current value, or None when it was deleted (a tombstone).
StoreChange = tuple[bytes, bytes | None]


class PartitionStore:
    """One partition of one named store. Writes mark the key dirty; ``take_changes`` hands the
    dirty keys to the changelog flush. ``load`` applies restored records without marking them."""

    __slots__ = ("name", "partition", "_data", "_dirty", "changelog_end")

    def __init__(self, name: str, partition: int, data: dict[bytes, bytes] | None = None,
                 changelog_end: int = 0) -> None:
        self.name = name
        self.partition = partition
        self._data: dict[bytes, bytes] = {} if data is None else data
        self._dirty: set[bytes] = set()
        #: The changelog offset this store's content covers (exclusive end), as of its last flush.
        self.changelog_end = changelog_end

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self._data.get(key, default)

    def __getitem__(self, key: bytes) -> bytes:
        return self._data[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._data[key] = value
        self._dirty.add(key)

    def __delitem__(self, key: bytes) -> None:
        del self._data[key]
        self._dirty.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._data)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return self._data.items()

    def load(self, key: bytes, value: bytes | None) -> None:
        """Apply one restored changelog record (None deletes): not a change to flush."""
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = value

    def clear(self) -> None:
        """Forget the content (restore starts over from the changelog's beginning)."""
        self._data.clear()
        self._dirty.clear()
        self.changelog_end = 0

    def mark_dirty(self, keys: Iterable[bytes]) -> None:
        """Rewrite these keys at the next flush (their current value, or a tombstone if absent)."""
        self._dirty.update(keys)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def take_changes(self) -> list[StoreChange]:
        """The dirty keys with their current value (None = deleted), clearing the dirty set."""
        dirty, self._dirty = self._dirty, set()
        data = self._data
        return [(key, data.get(key)) for key in dirty]

    def copy_data(self) -> dict[bytes, bytes]:
        """A shallow copy (values are immutable bytes) for a snapshot written off the event loop."""
        return dict(self._data)


class RoutedStore:
    """A ``StateStore`` over the owned partitions of one named store: key -> partition_of(key).

    A key that hashes to a partition this worker does not own raises ``NotLocalError``: its state
    lives on another worker, and writing it here would split it.
    """

    __slots__ = ("name", "_stores", "_n_partitions")

    def __init__(self, name: str, stores: Mapping[int, PartitionStore], n_partitions: int) -> None:
        self.name = name
        self._stores = stores
        self._n_partitions = n_partitions

    def store_for(self, key: bytes) -> PartitionStore:
        partition = partition_of(key, self._n_partitions)
        store = self._stores.get(partition)
        if store is None:
            raise NotLocalError(f"store {self.name!r}: key {key[:64]!r} belongs to partition {partition}, "
                                f"which this worker does not own (owned: {sorted(self._stores)})")
        return store

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self.store_for(key).get(key, default)

    def __getitem__(self, key: bytes) -> bytes:
        return self.store_for(key)[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.store_for(key)[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self.store_for(key)[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and key in self.store_for(key)

    def __len__(self) -> int:
        return sum(len(store) for store in self._stores.values())

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        for store in list(self._stores.values()):
            yield from store.items()
