"""Cell activity: located user events, re-keyed by H3 cell, counted in event-time hopping windows.

The behavior pipeline turns each batch's located events into ``cell-events`` records, one per
partition of that topic (:func:`cell_batches`), so one worker owns each cell. Here windows close
when the watermark (the smallest of the partitions' latest event times, minus grace) passes their
end; an event whose every window has closed is counted late. Each cell's open windows are its
state, written to the store whenever they change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import h3
import msgspec
import numpy as np

from models.next_action.crowd import CellProfile, CrowdAlert, CrowdAnomalyConfig, CrowdAnomalyScorer
from schemas import AnomalyAlert, CellActivity, encode
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received, Record, StateStore, partition_of
from stream_app.settings import Settings
from stream_app.windows import ActivityWindow, EventTimeWindows, Watermark

__all__ = ["CellEvent", "CellPipeline", "cell_of", "cell_batches", "decode_cell_events", "crowd_alert"]

PIPELINE = "cells"


class CellEvent(msgspec.Struct, array_like=True):
    """The part of a user event that cell activity needs (internal topic, compact)."""

    cell: str
    ts: int
    user_id: str
    action: str


class _StoredProfile(msgspec.Struct, array_like=True):
    """A cell's time-of-week activity profile (crowd anomaly scoring), compact."""

    level: list[float]
    seen: int
    slot_mean: bytes  # float32 [168, 2]
    slot_seen: bytes  # uint16 [168]
    last_alert_ms: int | None


class _StoredCell(msgspec.Struct, array_like=True):
    windows: dict[int, tuple[int, list[str], dict[str, int]]]
    closed_until: int
    profile: _StoredProfile | None = None  # absent in states written before crowd alerts


_events_encoder, _events_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(list[CellEvent])
_cell_encoder, _cell_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredCell)


def cell_of(lat: float, lon: float, resolution: int) -> str:
    """The H3 cell of a location."""
    cell: str = h3.latlng_to_cell(lat, lon, resolution)
    return cell


def cell_batches(events: Iterable[Any], n_partitions: int, resolution: int) -> Iterator[Record]:
    """(key, value) records for ``cell-events``: one per partition of that topic, holding the
    batch's located events of the cells that partition owns (a cell belongs to the partition its
    key hashes to, as in the cell table), keyed by one of those cells so it lands there. One record
    per partition rather than per cell or event keeps both the producer's and the cell pipeline's
    per-record work small."""
    by_partition: dict[int, tuple[bytes, list[CellEvent]]] = {}
    for event in events:
        if event.lat is not None and event.lon is not None:
            cell = cell_of(event.lat, event.lon, resolution)
            key = cell.encode()
            group = by_partition.setdefault(partition_of(key, n_partitions), (key, []))
            group[1].append(CellEvent(cell, event.ts, event.user_id, event.action))
    for key, located in by_partition.values():
        yield key, _events_encoder.encode(located)


def decode_cell_events(raw: bytes) -> list[CellEvent]:
    """The events of one ``cell-events`` record."""
    events: list[CellEvent] = _events_decoder.decode(raw)
    return events


class CellPipeline:
    """Hopping windows of activity per cell, for the cells one worker owns.

    ``process`` adds a batch and returns the ``cell-activity`` records of the windows it closed;
    ``close_windows`` (from a timer) closes what the watermark passed while no record came. The
    open windows are restored from ``store`` before the first batch.
    """

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.resolution = settings.h3_resolution
        self.windows: EventTimeWindows[ActivityWindow] = EventTimeWindows(
            size_ms=settings.cell_window_s * 1000, step_ms=settings.cell_step_s * 1000, new_window=ActivityWindow)
        self.watermark = Watermark(grace_ms=int(settings.grace_s * 1000), idle_s=settings.watermark_idle_s,
                                   partitions=settings.partitions, clock=clock)
        self._late = metrics.late_events.labels(pipeline=PIPELINE)
        self._closed = metrics.windows_closed.labels(kind="cell")
        self._restored = False
        # Crowd anomalies: each cell's time-of-week profile (kept with its state), the population's
        # rhythm in the scorer; alerts wait in ``alerts`` until the transport takes them.
        self.crowd = CrowdAnomalyScorer(CrowdAnomalyConfig(
            alpha=settings.crowd_alert_alpha, min_users=settings.crowd_alert_min_users,
            utc_offset_hours=settings.crowd_alert_utc_offset_h))
        self.profiles: dict[str, CellProfile] = {}
        self.alerts: list[Record] = []
        self._alert_count = metrics.anomaly_alerts.labels(kind="crowd")

    def process(self, batch: Iterable[Received[list[CellEvent]]]) -> list[Record]:
        """Count a batch of ``cell-events`` records; the records of every window that closed."""
        self._restore_once()
        touched: set[str] = set()
        late = 0
        for received in batch:
            for event in received.value:
                self.watermark.observe(event.ts, received.partition)
                if self.windows.add(event.cell, event.ts, event.user_id, event.action):
                    touched.add(event.cell)
                else:
                    late += 1
        if late:
            self._late.inc(late)
        return self.close_windows(touched)

    def close_windows(self, touched: set[str] | None = None) -> list[Record]:
        """The records of every window the watermark passed; stores the cells that changed."""
        touched = set() if touched is None else touched
        closed = []
        for cell, start, window in list(self.windows.close(self.watermark.value)):
            activity = self._activity(cell, start, window)
            closed.append((cell.encode(), encode(activity)))
            self._score_crowd(activity)
            touched.add(cell)
        self._closed.inc(len(closed))
        for cell in touched:
            self.store[cell.encode()] = self._encode(cell)
        return closed

    def take_alerts(self) -> list[Record]:
        """The crowd alerts raised since the last call (keyed by cell), for ``anomaly-alerts``."""
        alerts, self.alerts = self.alerts, []
        return alerts

    def _score_crowd(self, activity: CellActivity) -> None:
        profile = self.profiles.setdefault(activity.cell, CellProfile())
        alert = self.crowd.observe(profile, activity.cell, activity.window_start, activity.window_end,
                                   activity.events, activity.users)
        if alert is not None:
            self.alerts.append((activity.cell.encode(), encode(crowd_alert(alert))))
            self._alert_count.inc()

    def _activity(self, cell: str, start: int, window: ActivityWindow) -> CellActivity:
        return CellActivity(cell=cell, resolution=self.resolution, window_start=start,
                            window_end=start + self.windows.size_ms, events=window.events,
                            users=len(window.users), actions=dict(window.actions))

    def _encode(self, cell: str) -> bytes:
        open_windows = {start: (w.events, sorted(w.users), w.actions)
                        for start, w in self.windows.open.get(cell, {}).items()}
        profile = self.profiles.get(cell)
        return _cell_encoder.encode(_StoredCell(windows=open_windows,
                                                closed_until=self.windows.closed_until.get(cell, -1),
                                                profile=None if profile is None else _store_profile(profile)))

    def _restore_once(self) -> None:
        """Open windows of this worker's cells, as the store holds them (once, before the first batch)."""
        if self._restored:
            return
        self._restored = True
        for key, raw in list(self.store.items()):
            cell, stored = key.decode(), _cell_decoder.decode(raw)
            self.windows.closed_until[cell] = stored.closed_until
            if stored.profile is not None:
                self.profiles[cell] = _load_profile(stored.profile)
            for start, (events, users, actions) in stored.windows.items():
                self.windows.open.setdefault(cell, {})[start] = ActivityWindow(events, set(users), dict(actions))


def crowd_alert(alert: CrowdAlert) -> AnomalyAlert:
    """The ``anomaly-alerts`` record of a crowd alert (its id names the cell and window: one per window)."""
    critical = alert.p_value < 1e-12
    return AnomalyAlert(alert_id=f"crowd:{alert.cell}:{alert.window_start_ms}", kind="crowd", key=alert.cell,
                        ts=alert.window_end_ms, observed=alert.observed, expected=alert.expected, score=alert.score,
                        severity="critical" if critical else "warning", detail=alert.detail)


def _store_profile(profile: CellProfile) -> _StoredProfile:
    return _StoredProfile(level=[float(v) for v in profile.level], seen=profile.seen,
                          slot_mean=profile.slot_mean.astype("<f4").tobytes(),
                          slot_seen=profile.slot_seen.astype("<u2").tobytes(), last_alert_ms=profile.last_alert_ms)


def _load_profile(stored: _StoredProfile) -> CellProfile:
    empty = CellProfile()
    return CellProfile(level=np.array(stored.level, dtype=np.float64), seen=stored.seen,
                       slot_mean=np.frombuffer(stored.slot_mean, "<f4").astype(np.float32).reshape(
                           empty.slot_mean.shape),
                       slot_seen=np.frombuffer(stored.slot_seen, "<u2").astype(np.uint16).copy(),
                       last_alert_ms=stored.last_alert_ms)
