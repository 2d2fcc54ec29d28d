"""Cell events for the cell agent: one record per partition, every cell in it owned there."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from stream_app.agents.cells import CellEvent, cell_batches, cell_of
from stream_app.sending import partition_of

T0 = 1_700_000_000_000


def _events(n: int) -> list[SimpleNamespace]:
    located = [SimpleNamespace(user_id=f"u{i % 7}", ts=T0 + i, action="view",
                               lat=40.70 + 0.01 * (i % 13), lon=-74.00 + 0.01 * (i % 5)) for i in range(n)]
    return located + [SimpleNamespace(user_id="nowhere", ts=T0, action="view", lat=None, lon=None)]


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_one_record_per_partition_holding_only_the_cells_it_owns(partitions: int) -> None:
    events = _events(60)
    records = list(cell_batches(events, partitions))
    assert len(records) == len({partition_of(cell_of(e.lat, e.lon).encode(), partitions)
                                for e in events if e.lat is not None})
    seen = []
    for key, value in records:
        owner = partition_of(key, partitions)
        decoded = msgspec.msgpack.decode(value, type=list[CellEvent])
        assert all(partition_of(e.cell.encode(), partitions) == owner for e in decoded)
        seen += [(e.cell, e.ts, e.user_id) for e in decoded]
    assert sorted(seen) == sorted((cell_of(e.lat, e.lon), e.ts, e.user_id) for e in events if e.lat is not None)
