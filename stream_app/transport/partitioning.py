"""Keys to partitions exactly as Kafka's default partitioner (murmur2, as the Java client)."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

__all__ = ["partition_of"]


@lru_cache(maxsize=262_144)  # a pure function: the cache only saves the hash of hot keys
def partition_of(key: bytes, n_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``n_partitions``."""
    return int(murmur2(key) & 0x7FFFFFFF) % n_partitions
