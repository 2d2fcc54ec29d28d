"""Cell activity without a broker: cell-event records per partition, hopping windows, late events, state."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from schemas import AnomalyAlert, CellActivity
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received, partition_of
from stream_app.pipelines.cells import CellEvent, CellPipeline, cell_batches, cell_of, decode_cell_events
from stream_app.settings import Settings

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
MIN = 60_000
RES = 8
SETTINGS = Settings(cell_window_s=120, cell_step_s=60, grace_s=0.0, partitions=2, watermark_idle_s=5.0,
                    h3_resolution=RES)


def _events(n: int) -> list[SimpleNamespace]:
    located = [SimpleNamespace(user_id=f"u{i % 7}", ts=T0 + i, action="view",
                               lat=40.70 + 0.01 * (i % 13), lon=-74.00 + 0.01 * (i % 5)) for i in range(n)]
    return located + [SimpleNamespace(user_id="nowhere", ts=T0, action="view", lat=None, lon=None)]


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_one_record_per_partition_holding_only_the_cells_it_owns(partitions: int) -> None:
    events = _events(60)
    records = list(cell_batches(events, partitions, RES))
    assert len(records) == len({partition_of(cell_of(e.lat, e.lon, RES).encode(), partitions)
                                for e in events if e.lat is not None})
    seen = []
    for key, value in records:
        owner = partition_of(key, partitions)
        decoded = decode_cell_events(value)
        assert all(partition_of(e.cell.encode(), partitions) == owner for e in decoded)
        seen += [(e.cell, e.ts, e.user_id) for e in decoded]
    assert sorted(seen) == sorted((cell_of(e.lat, e.lon, RES), e.ts, e.user_id) for e in events if e.lat is not None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _received(partition: int, *events: tuple[str, int, str, str]) -> Received[list[CellEvent]]:
    return Received([CellEvent(*event) for event in events], 0.0, partition)


def _activities(records: list[tuple[bytes, bytes]]) -> dict[tuple[str, int], CellActivity]:
    decoded = {}
    for key, value in records:
        activity = msgspec.json.decode(value, type=CellActivity)
        assert key == activity.cell.encode()
        decoded[(activity.cell, activity.window_start)] = activity
    return decoded


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_windows_close_once_every_partition_passed_them() -> None:
    clock, metrics, store = FakeClock(), Metrics(), {}
    pipeline = CellPipeline(SETTINGS, store, metrics, clock=clock)
    first = pipeline.process([_received(0, ("c1", T0 + 10_000, "u1", "view"), ("c1", T0 + 70_000, "u2", "buy"),
                                        ("c1", T0 + 80_000, "u1", "view"))])
    assert first == [], "partition 1 has not reported: it may still hold older events"
    assert set(store) == {b"c1"}, "the changed cell is stored after the batch"
    closed = _activities(pipeline.process([_received(1, ("c2", T0 + 5 * MIN, "u3", "view"))]))
    # The watermark is now min(T0 + 80 s, T0 + 5 min): windows [T0 - 1 min, T0 + 1 min) ended.
    assert set(closed) == {("c1", T0 - MIN)}
    assert (closed[("c1", T0 - MIN)].events, closed[("c1", T0 - MIN)].users) == (1, 1)
    clock.now = 10.0  # both partitions idle: the furthest one sets the watermark
    closed = _activities(pipeline.close_windows())
    assert set(closed) == {("c1", T0), ("c1", T0 + MIN)}
    assert closed[("c1", T0)].actions == {"view": 2, "buy": 1} and closed[("c1", T0)].users == 2
    assert _sample(metrics, "stream_app_windows_closed_total", kind="cell") == 3


def test_an_event_whose_windows_all_closed_is_counted_late() -> None:
    clock, metrics = FakeClock(), Metrics()
    pipeline = CellPipeline(SETTINGS, {}, metrics, clock=clock)
    pipeline.process([_received(0, ("c1", T0, "u1", "view")), _received(1, ("c1", T0 + 10 * MIN, "u1", "view"))])
    clock.now = 10.0
    assert {start for _, start in _activities(pipeline.close_windows())} == {T0 - MIN, T0}
    assert pipeline.process([_received(0, ("c1", T0 + 30_000, "u2", "view"))]) == []
    assert _sample(metrics, "stream_app_late_events_total", pipeline="cells") == 1


def test_a_new_pipeline_restores_open_windows_from_the_store() -> None:
    store: dict[bytes, bytes] = {}
    before = CellPipeline(SETTINGS, store, Metrics(), clock=FakeClock())
    before.process([_received(0, ("c1", T0 + 10_000, "u1", "view"), ("c1", T0 + 20_000, "u2", "view"))])

    after = CellPipeline(SETTINGS, store, Metrics(), clock=FakeClock())
    far = ("c9", T0 + 10 * MIN, "u9", "view")  # moves both partitions past the windows above
    closed = _activities(after.process([_received(0, ("c1", T0 + 30_000, "u3", "buy"), far), _received(1, far)]))
    assert closed[("c1", T0)].events == 3 and closed[("c1", T0)].users == 3, "counts continue across the restart"


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
               ) -> tuple[list[AnomalyAlert], CellPipeline]:
    pipeline = CellPipeline(CROWD_SETTINGS, {} if store is None else store, metrics or Metrics(), clock=FakeClock())
    alerts = []
    for chunk in range(0, len(events), 500):
        batch = [Received(decode_cell_events(value), 0.0, 0)
                 for _, value in cell_batches(events[chunk:chunk + 500], 1, RES)]
        pipeline.process(batch)
        alerts += [msgspec.json.decode(value, type=AnomalyAlert) for _, value in pipeline.take_alerts()]
    return alerts, pipeline


def test_a_clean_city_raises_no_crowd_alert() -> None:
    alerts, pipeline = _crowd_run(_city_events())
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
    alerts, pipeline = _crowd_run(events, store, metrics)
    cell = cell_of(place.lat, place.lon, RES)
    crowded = {cell_of(e.lat, e.lon, RES) for e in events if e.properties.get("injected") == "gathering"}
    assert cell in {a.key for a in alerts}, "the gathering's cell alerts"
    assert {a.key for a in alerts} <= crowded, "only cells the gathering spilled into (it is 50 m wide)"
    first = next(a for a in alerts if a.key == cell)
    assert first.kind == "crowd" and start <= first.ts <= start + 2 * 3_600_000 + 900_000
    assert first.observed > first.expected and "spike" in first.detail
    assert _sample(metrics, "stream_app_anomaly_alerts_total", kind="crowd") == len(alerts)
    restored = CellPipeline(CROWD_SETTINGS, store, Metrics(), clock=FakeClock())
    restored.process([])
    assert restored.profiles[cell].seen == pipeline.profiles[cell].seen > 0, "the profile is kept with the cell"
