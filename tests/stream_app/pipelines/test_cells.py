"""Cell activity without a broker: cell-event records per partition with their sources, hopping
windows per partition, late events, replays dropped by source offset, restores, silent cells."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from schemas import AnomalyAlert, CellActivity
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received, partition_of
from stream_app.pipelines.cells import (
    PARTITION_KEY,
    CellEvent,
    CellPipeline,
    cell_batches,
    cell_of,
    decode_cell_events,
)
from stream_app.settings import Settings

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
MIN = 60_000
RES = 8
SETTINGS = Settings(cell_window_s=120, cell_step_s=60, grace_s=0.0, partitions=2, watermark_idle_s=5.0,
                    h3_resolution=RES)


def _events(n: int) -> list[Received[SimpleNamespace]]:
    located = [SimpleNamespace(user_id=f"u{i % 7}", ts=T0 + i, action="view",
                               lat=40.70 + 0.01 * (i % 13), lon=-74.00 + 0.01 * (i % 5)) for i in range(n)]
    events = located + [SimpleNamespace(user_id="nowhere", ts=T0, action="view", lat=None, lon=None)]
    return [Received(event, 0.0, i % 3, 100 + i) for i, event in enumerate(events)]


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_one_record_per_partition_holding_only_the_cells_it_owns_with_their_sources(partitions: int) -> None:
    batch = _events(60)
    records = list(cell_batches(batch, partitions, RES))
    located = [r for r in batch if r.value.lat is not None]
    assert len(records) == len({partition_of(cell_of(r.value.lat, r.value.lon, RES).encode(), partitions)
                                for r in located})
    seen = []
    for key, value in records:
        owner = partition_of(key, partitions)
        decoded = decode_cell_events(value)
        assert all(partition_of(e.cell.encode(), partitions) == owner for e in decoded)
        seen += [(e.cell, e.ts, e.user_id, e.source_partition, e.source_offset) for e in decoded]
    assert sorted(seen) == sorted((cell_of(r.value.lat, r.value.lon, RES), r.value.ts, r.value.user_id, r.partition,
                                   r.offset) for r in located)


def test_records_written_before_sources_decode_with_no_source() -> None:
    old = msgspec.msgpack.encode([["c1", T0, "u1", "view"]])
    assert decode_cell_events(old) == [CellEvent("c1", T0, "u1", "view", -1, -1)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(*events: tuple) -> list[CellEvent]:
    """One cell-events record: (cell, ts, user, action[, source partition, source offset]) per event."""
    return [CellEvent(*event) for event in events]


def _activities(records: list[tuple[bytes, bytes]]) -> dict[tuple[str, int], CellActivity]:
    decoded = {}
    for key, value in records:
        activity = msgspec.json.decode(value, type=CellActivity)
        assert key == activity.cell.encode()
        decoded[(activity.cell, activity.window_start)] = activity
    return decoded


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _pipeline(store: dict | None = None, clock: FakeClock | None = None, metrics: Metrics | None = None,
              settings: Settings = SETTINGS, partition: int = 0) -> CellPipeline:
    pipeline = CellPipeline(settings, metrics or Metrics(), clock=clock or FakeClock())
    pipeline.load(partition, {} if store is None else store)
    return pipeline


def test_windows_close_once_every_source_partition_passed_them() -> None:
    clock, metrics, store = FakeClock(), Metrics(), {}
    pipeline = _pipeline(store, clock, metrics)
    first = pipeline.process(0, [_record(("c1", T0 + 10_000, "u1", "view", 0, 1),
                                         ("c1", T0 + 70_000, "u2", "buy", 0, 2),
                                         ("c1", T0 + 80_000, "u1", "view", 0, 3))])
    assert first == [], "source partition 1 has not reported: it may still hold older events"
    assert set(store) == {b"c1", PARTITION_KEY}, "the changed cell and the partition's progress are stored"
    closed = _activities(pipeline.process(0, [_record(("c2", T0 + 5 * MIN, "u3", "view", 1, 1))]))
    # The watermark is now min(T0 + 80 s, T0 + 5 min): windows [T0 - 1 min, T0 + 1 min) ended.
    assert set(closed) == {("c1", T0 - MIN)}
    assert (closed[("c1", T0 - MIN)].events, closed[("c1", T0 - MIN)].users) == (1, 1)
    clock.now = 10.0  # both sources idle: the furthest one sets the watermark
    closed = _activities(pipeline.close_windows())
    assert set(closed) == {("c1", T0), ("c1", T0 + MIN)}
    assert closed[("c1", T0)].actions == {"view": 2, "buy": 1} and closed[("c1", T0)].users == 2
    assert _sample(metrics, "stream_app_windows_closed_total", kind="cell") == 3


def test_partitions_keep_their_own_watermark() -> None:
    pipeline = _pipeline()
    pipeline.load(1, {})
    pipeline.process(0, [_record(("c1", T0, "u1", "view", 0, 1), ("c1", T0 + 10 * MIN, "u1", "view", 0, 2)),
                         _record(("c1", T0 + 10 * MIN, "u2", "view", 1, 1))])
    assert pipeline.process(1, [_record(("c7", T0, "u3", "view", 0, 3))]) == [], \
        "partition 0's progress does not close partition 1's windows"


def test_an_event_whose_windows_all_closed_is_counted_late() -> None:
    clock, metrics = FakeClock(), Metrics()
    pipeline = _pipeline(clock=clock, metrics=metrics)
    pipeline.process(0, [_record(("c1", T0, "u1", "view", 0, 1), ("c1", T0 + 10 * MIN, "u1", "view", 1, 1))])
    clock.now = 10.0
    assert {start for _, start in _activities(pipeline.close_windows())} == {T0 - MIN, T0}
    assert pipeline.process(0, [_record(("c1", T0 + 30_000, "u2", "view", 0, 2))]) == []
    assert _sample(metrics, "stream_app_late_events_total", pipeline="cells") == 1


def test_a_reloaded_partition_resumes_its_windows_and_its_watermark_from_the_store() -> None:
    store: dict[bytes, bytes] = {}
    before = _pipeline(store)
    before.process(0, [_record(("c1", T0 + 10_000, "u1", "view", 0, 1), ("c1", T0 + 20_000, "u2", "view", 0, 2),
                                ("c5", T0 + 9 * MIN, "u5", "view", 1, 1))])

    after = _pipeline(store)
    # Source 1 is not heard from after the reload, yet it still holds the watermark at T0 + 9 min
    # (its latest event before), and source 0 reaching T0 + 10 min closes what ended by then.
    closed = _activities(after.process(0, [_record(("c1", T0 + 30_000, "u3", "buy", 0, 3),
                                                    ("c9", T0 + 10 * MIN, "u9", "view", 0, 4))]))
    assert closed[("c1", T0)].events == 3 and closed[("c1", T0)].users == 3, "counts continue across the reload"
    assert max(start for _, start in closed) + 2 * MIN <= T0 + 9 * MIN, "source 1's progress was kept"



def test_write_behind_keeps_changes_in_memory_until_flush_and_a_reload_then_resumes_them() -> None:
    events = [("c1", T0 + 10_000, "u1", "view", 0, 1), ("c1", T0 + 20_000, "u2", "view", 0, 2),
              ("c5", T0 + 9 * MIN, "u5", "view", 1, 1)]
    store: dict[bytes, bytes] = {}
    behind = _pipeline(store)
    behind.write_behind = True
    behind.process(0, [_record(*events)])
    assert store == {}, "nothing written before the flush"
    behind.flush()
    written = dict(store)
    eager_store: dict[bytes, bytes] = {}
    _pipeline(eager_store).process(0, [_record(*events)])
    assert written == eager_store, "a flush writes what a write per batch would have"
    behind.flush()
    assert store == written, "nothing left to write after a flush"
    after = _pipeline(store)
    closed = _activities(after.process(0, [_record(("c1", T0 + 30_000, "u3", "buy", 0, 3),
                                                    ("c9", T0 + 10 * MIN, "u9", "view", 0, 4))]))
    assert closed[("c1", T0)].events == 3, "counts continue from the flushed store"


# ------------------------------------------------------------------ replays

def _replay_run(records: list[list[CellEvent]], store: dict | None = None, metrics: Metrics | None = None,
                clock: FakeClock | None = None) -> dict[tuple[str, int], CellActivity]:
    clock = clock or FakeClock()
    pipeline = _pipeline(store, clock, metrics)
    closed = {}
    for record in records:
        closed.update(_activities(pipeline.process(0, [record])))
    clock.now = 10.0
    closed.update(_activities(pipeline.close_windows()))
    return closed


def _stream(source: int, n: int, cell: str = "c1") -> list[CellEvent]:
    return [CellEvent(cell, T0 + i * 5_000, f"u{i % 4}", "view", source, i) for i in range(n)]


def test_a_replayed_prefix_of_a_source_is_dropped_and_counted() -> None:
    zero, one = _stream(0, 60), _stream(1, 60, cell="c2")
    clean = _replay_run([zero[:30], one[:30], zero[30:], one[30:]])
    metrics = Metrics()
    # The behavior stage crashed after delivering zero[:30] and re-sends from offset 10 on.
    replayed = _replay_run([zero[:30], one[:30], zero[10:45], one[30:], zero[45:]], metrics=metrics)
    assert replayed == clean
    assert _sample(metrics, "stream_app_duplicate_events_total", pipeline="cells") == 20


def test_replay_marks_survive_a_reload_with_the_windows() -> None:
    store: dict[bytes, bytes] = {}
    events = _stream(0, 40)
    clean = _replay_run([events])
    first = _pipeline(store)
    first.process(0, [events[:25]])
    metrics = Metrics()
    after = _replay_run([events[5:]], store=store, metrics=metrics)  # a new owner, and the upstream replays
    assert after == clean
    assert _sample(metrics, "stream_app_duplicate_events_total", pipeline="cells") == 20


def test_events_without_a_source_are_never_taken_for_replays() -> None:
    events = [CellEvent("c1", T0 + i, "u1", "view") for i in range(5)]
    later = [CellEvent("c9", T0 + 10 * MIN, "u1", "view")]
    assert _replay_run([events, events, later])[("c1", T0)].events == 10


# ------------------------------------------------------------------ crowd anomaly alerts

CROWD_SETTINGS = Settings(cell_window_s=900, cell_step_s=900, grace_s=0.0, partitions=1, watermark_idle_s=5.0,
                          h3_resolution=RES)


def _city_events(gathering=None) -> list[SimpleNamespace]:
    from simulation.users import BehaviorConfig, generate_user_events, inject_gathering

    events = generate_user_events(BehaviorConfig(n_users=300, n_events=20_000, seed=5)).events
    if gathering is not None:
        events = inject_gathering(events, gathering)
    return [SimpleNamespace(**e) for e in events]


def _crowd_run(events: list[SimpleNamespace], store: dict | None = None, metrics: Metrics | None = None
               ) -> tuple[list[AnomalyAlert], list[CellActivity], CellPipeline]:
    pipeline = _pipeline(store, metrics=metrics, settings=CROWD_SETTINGS)
    alerts, closed = [], []
    for chunk in range(0, len(events), 500):
        batch = [Received(event, 0.0, 0, chunk + i) for i, event in enumerate(events[chunk:chunk + 500])]
        records = [decode_cell_events(value) for _, value in cell_batches(batch, 1, RES)]
        closed += [msgspec.json.decode(value, type=CellActivity) for _, value in pipeline.process(0, records)]
        alerts += [msgspec.json.decode(value, type=AnomalyAlert) for _, value in pipeline.take_alerts()]
    return alerts, closed, pipeline


def test_a_clean_city_raises_no_crowd_alert() -> None:
    alerts, _, pipeline = _crowd_run(_city_events())
    assert len(pipeline.profiles) > 50, "many cells were scored"
    assert alerts == []


def test_an_injected_gathering_raises_a_crowd_alert_for_its_cell() -> None:
    from simulation.users import Gathering

    clean = _city_events()
    start = clean[0].ts + 30 * 3_600_000
    place = next(e for e in clean if e.lat is not None and e.ts > start)  # somewhere people go
    gathering = Gathering(lat=place.lat, lon=place.lon, start_ms=start, end_ms=start + 2 * 3_600_000, seed=3)
    store, metrics = {}, Metrics()
    events = _city_events(gathering)
    alerts, _, pipeline = _crowd_run(events, store, metrics)
    cell = cell_of(place.lat, place.lon, RES)
    crowded = {cell_of(e.lat, e.lon, RES) for e in events if e.properties.get("injected") == "gathering"}
    assert cell in {a.key for a in alerts}, "the gathering's cell alerts"
    assert {a.key for a in alerts} <= crowded, "only cells the gathering spilled into (it is 50 m wide)"
    first = next(a for a in alerts if a.key == cell)
    assert first.kind == "crowd" and start <= first.ts <= start + 2 * 3_600_000 + 900_000
    assert first.observed > first.expected and "spike" in first.detail
    assert _sample(metrics, "stream_app_anomaly_alerts_total", kind="crowd") == len(alerts)
    restored = _pipeline(store, settings=CROWD_SETTINGS)
    assert restored.profiles[cell].seen == pipeline.profiles[cell].seen > 0, "the profile is kept with the cell"


T15 = T0 - T0 % 900_000  # 15-minute windows start on the quarter hour
HOUR = 3_600_000


def test_a_cell_whose_traffic_stops_closes_empty_windows_and_raises_a_drop_alert() -> None:
    pipeline = _pipeline(settings=CROWD_SETTINGS)
    quiet, busy = "quiet-cell", "busy-cell"
    closed: list[CellActivity] = []
    alerts: list[AnomalyAlert] = []
    offset = 0
    for w in range(40):  # one record per window: both cells busy for 20 windows, then only one of them
        cells = (busy, quiet) if w < 20 else (busy,)
        record = []
        for i in range(60):
            for cell in cells:
                record.append(CellEvent(cell, T15 + w * 900_000 + i * 15_000, f"{cell}-u{i}", "view", 0, offset))
                offset += 1
        closed += [msgspec.json.decode(v, type=CellActivity) for _, v in pipeline.process(0, [record])]
        alerts += [msgspec.json.decode(v, type=AnomalyAlert) for _, v in pipeline.take_alerts()]
    silent = [a for a in closed if a.cell == quiet and a.window_start >= T15 + 20 * 900_000]
    assert silent and all(a.events == 0 and a.users == 0 for a in silent), "the quiet cell's windows close empty"
    assert len(silent) == 19, "up to the watermark: the busy cell's last closed window"
    drops = [a for a in alerts if a.key == quiet]
    assert drops and drops[0].observed == 0 and "drop" in drops[0].detail
    assert drops[0].ts == T15 + 21 * 900_000, "the first silent window alerts"
    assert not [a for a in alerts if a.key == busy]


def test_silent_windows_are_bounded_and_only_for_profiled_cells() -> None:
    settings = Settings(cell_window_s=3600, cell_step_s=3600, grace_s=0.0, partitions=1, h3_resolution=RES)
    pipeline = _pipeline(settings=settings)
    start = T0 - T0 % HOUR
    young = [CellEvent("young", start + 1000, "u1", "view", 0, 0)]  # one window: no established profile
    steady = [CellEvent("steady", start + h * HOUR + i, f"u{i}", "view", 0, 1 + h * 5 + i)
              for h in range(20) for i in range(5)]
    far = [CellEvent("elsewhere", start + 200 * HOUR, "u9", "view", 0, 10_000)]
    closed = _activities(pipeline.process(0, [young + steady + far]))
    closed.update(_activities(pipeline.close_windows()))
    young_windows = [window for cell, window in closed if cell == "young"]
    steady_silent = sorted(window for (cell, window), a in closed.items() if cell == "steady" and a.events == 0)
    assert young_windows == [start], "a cell without an established profile closes no empty window"
    assert steady_silent == [start + h * HOUR for h in range(20, 26)], \
        "six hours of silent windows (SILENT_SPAN_MS), then the cell waits for its next event"


@pytest.mark.parametrize(("size_s", "step_s"), [(300, 60), (120, 60), (250, 100), (60, 60)])
def test_events_land_in_the_windows_event_time_windows_puts_them_in_and_late_ones_in_none(size_s: int,
                                                                                         step_s: int) -> None:
    """The partition counts events in its windows itself (the calls cost more than the counting): the
    same windows, counts, users and action order as ``EventTimeWindows.add``, and the same late events,
    whether or not the step divides the window."""
    from random import Random

    from stream_app.pipelines.cells import CellPartition
    from stream_app.windows import ActivityWindow, EventTimeWindows

    settings = Settings(cell_window_s=size_s, cell_step_s=step_s, grace_s=0.0, partitions=1, h3_resolution=RES)
    cells = CellPartition(settings, {}, sources=1, clock=FakeClock())
    reference: EventTimeWindows[ActivityWindow] = EventTimeWindows(size_ms=size_s * 1000, step_ms=step_s * 1000,
                                                                   new_window=ActivityWindow)
    rng, late, offset = Random(7), 0, 0
    for round_ in range(40):
        events = []
        for _ in range(30):
            offset += 1
            ts = T0 + round_ * 40_000 + rng.randrange(-400_000, 60_000)  # some behind closed windows
            events.append(CellEvent(f"c{rng.randrange(4)}", ts, f"u{rng.randrange(6)}", rng.choice("abc"), 0, offset))
        refused = sum(not reference.add(e.cell, e.ts, e.user_id, e.action) for e in events)
        assert cells.add(events)[1] == refused
        late += refused
        watermark = T0 + round_ * 40_000 - 100_000
        assert [(k, s) for k, s, _ in cells.windows.close(watermark)] == [(k, s) for k, s, _ in
                                                                          reference.close(watermark)]
        assert cells.windows.closed_until == reference.closed_until
        assert {cell: [(s, w.events, sorted(w.users), list(w.actions.items())) for s, w in windows.items()]
                for cell, windows in cells.windows.open.items()} == \
               {cell: [(s, w.events, sorted(w.users), list(w.actions.items())) for s, w in windows.items()]
                for cell, windows in reference.open.items()}
    assert late > 0, "some events came after all their windows had closed"


def test_cell_activity_records_are_what_schemas_encode_writes() -> None:
    """The records of one close are encoded in one call: each one the bytes ``encode`` gives its record,
    actions in the order they came (a newline in an action stays escaped inside its record)."""
    from schemas import encode

    clock = FakeClock()
    pipeline = _pipeline(clock=clock)
    pipeline.process(0, [_record(("c1", T0 + 1_000, "u1", "buy", 0, 1), ("c1", T0 + 2_000, "u2", "view\n", 0, 2),
                                 ("c2", T0 + 3_000, "u1", "view", 1, 1), ("c1", T0 + 4_000, "u3", "buy", 1, 2),
                                 ("c3", T0 + 10 * MIN, "u4", "view", 1, 3))])
    clock.now = 10.0
    records = pipeline.close_windows()
    assert len(records) == 4
    for key, value in records:
        activity = msgspec.json.decode(value, type=CellActivity)
        assert value == encode(activity) and key == activity.cell.encode()
    assert list(_activities(records)[("c1", T0)].actions) == ["buy", "view\n"]
