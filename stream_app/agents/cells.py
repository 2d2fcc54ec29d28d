"""Cell activity: user events re-keyed by H3 cell, counted in event-time hopping windows.

The behavior agent forwards the located events to the internal ``cell-events`` topic, partitioned
by cell, so one worker owns each cell (re-key before the table write). Windows close when the
watermark (the smallest of the partitions' latest event times, minus grace) passes their end; a
record whose every window has closed is counted late.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import h3
import msgspec

from schemas import CellActivity, encode
from stream_app.app import app, settings
from stream_app.metrics import METRICS
from stream_app.sending import partition_of, send_records
from stream_app.topics import cell_activity, cell_events
from stream_app.tables import ready_for_writes
from stream_app.windows import ActivityWindow, EventTimeWindows, Watermark

__all__ = ["CellEvent", "cell_of", "cell_batches", "count_cells"]

PIPELINE = "cells"


class CellEvent(msgspec.Struct, array_like=True):
    """The part of a user event that cell activity needs (internal topic, compact)."""

    cell: str
    ts: int
    user_id: str
    action: str


class _StoredCell(msgspec.Struct, array_like=True):
    windows: dict[int, tuple[int, list[str], dict[str, int]]]
    closed_until: int


_event_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(list[CellEvent]))
_cell_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredCell))

cell_table = app.Table("cell-windows", default=None, key_type=bytes, value_type=bytes,
                       partitions=settings.partitions, use_partitioner=True)
windows: EventTimeWindows[ActivityWindow] = EventTimeWindows(
    size_ms=settings.cell_window_s * 1000, step_ms=settings.cell_step_s * 1000, new_window=ActivityWindow)
watermark = Watermark(grace_ms=int(settings.grace_s * 1000), idle_s=settings.watermark_idle_s,
                      partitions=settings.partitions)


def cell_of(lat: float, lon: float) -> str:
    return h3.latlng_to_cell(lat, lon, settings.h3_resolution)


def cell_batches(events: Iterable, n_partitions: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records for ``cell-events``: one per partition of that topic, holding the
    batch's located events of the cells that partition owns (a cell belongs to the partition its
    key hashes to, as in the cell table), keyed by one of those cells so it lands there. One record
    per partition rather than per cell or event keeps both the producer's and the cell agent's
    per-record work small."""
    by_partition: dict[int, tuple[bytes, list[CellEvent]]] = {}
    for event in events:
        if event.lat is not None and event.lon is not None:
            cell = cell_of(event.lat, event.lon)
            key = cell.encode()
            group = by_partition.setdefault(partition_of(key, n_partitions), (key, []))
            group[1].append(CellEvent(cell, event.ts, event.user_id, event.action))
    for key, located in by_partition.values():
        yield key, _event_codec[0].encode(located)


@app.agent(cell_events)
async def count_cells(stream):
    await ready_for_writes(cell_table)
    restored = False
    async for batch in stream.take_events(settings.batch_max, within=settings.cell_batch_within_s):
        if not restored:
            _restore()
            restored = True
        touched = set()
        for kafka_event in batch:
            for event in _event_codec[1].decode(kafka_event.message.value):
                watermark.observe(event.ts, kafka_event.message.partition)
                if windows.add(event.cell, event.ts, event.user_id, event.action):
                    touched.add(event.cell)
                else:
                    METRICS.late_events.labels(pipeline=PIPELINE).inc()
        await _emit_closed(touched)


@app.timer(1.0)
async def close_idle_cell_windows() -> None:
    """Close windows even when no record arrives (idle partitions stop holding the watermark)."""
    await _emit_closed(set())


async def _emit_closed(touched: set[str]) -> None:
    """Emit every window the watermark passed; persist the cells that changed."""
    closed = []
    for cell, start, window in list(windows.close(watermark.value)):
        closed.append((cell.encode(), encode(_activity(cell, start, window))))
        touched.add(cell)
    await send_records(cell_activity, closed)
    METRICS.windows_closed.labels(kind="cell").inc(len(closed))
    for cell in touched:
        cell_table[cell.encode()] = _encode(cell)


def _activity(cell: str, start: int, window: ActivityWindow) -> CellActivity:
    return CellActivity(cell=cell, resolution=settings.h3_resolution, window_start=start,
                        window_end=start + windows.size_ms, events=window.events, users=len(window.users),
                        actions=dict(window.actions))


def _encode(cell: str) -> bytes:
    stored = _StoredCell(windows={s: (w.events, sorted(w.users), w.actions) for s, w in windows.open.get(cell, {}).items()},
                         closed_until=windows.closed_until.get(cell, -1))
    return _cell_codec[0].encode(stored)


def _restore() -> None:
    """Open windows of this worker's cells, recovered from the table's changelog."""
    for key, raw in list(cell_table.items()):
        cell, stored = key.decode(), _cell_codec[1].decode(raw)
        windows.closed_until[cell] = stored.closed_until
        for start, (events, users, actions) in stored.windows.items():
            windows.open.setdefault(cell, {})[start] = ActivityWindow(events, set(users), dict(actions))
