"""Output partitioning: the same partition as Kafka's default partitioner for every key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from stream_app.sending import partition_of


@given(key=st.binary(max_size=64), n=st.integers(min_value=1, max_value=64))
def test_partition_of_matches_the_default_partitioner(key: bytes, n: int) -> None:
    partitions = list(range(n))
    assert partition_of(key, n) == DefaultPartitioner()(key, partitions, partitions)
