"""Cell activity: located user events, re-keyed by H3 cell, counted in event-time hopping windows.

The behavior pipeline turns each batch's located events into ``cell-events`` records, one per
partition of that topic (:func:`cell_batches`), so one worker owns each cell. Each event carries
its source: the ``user-events`` partition and offset it came from.

Everything is kept per ``cell-events`` partition (:class:`CellPartition`), so a partition's state
moves, restores and checkpoints as one: its cells' open windows, ``closed_until`` and crowd
profiles, its watermark over the source partitions, its replay marks and its crowd rhythm.

- Windows close when the partition's watermark (the smallest of the source partitions' latest
  event times, minus grace; a source silent for ``watermark_idle_s`` stops holding it back) passes
  their end; an event whose every window has closed is counted late.
- Replays are dropped by source offset (the sequence-number deduplication of Kafka's idempotent
  producer, applied one stage downstream to an at-least-once upstream): the behavior stage writes
  a source partition's cell events in offset order with one idempotent producer, so what it sends
  again after a crash or a rebalance is a prefix of what was delivered before. Per source
  partition, a cell partition keeps the highest source offset it counted (its replay mark), in the
  same store and checkpoint as its windows; an event at or below the mark is a replay, dropped and
  counted (``stream_app_duplicate_events{pipeline="cells"}``). Events of records written before
  sources existed carry none (-1) and are always counted.
- A cell with an established crowd profile also closes the windows it had no event in (0 events)
  as the watermark passes them, at most ``SILENT_SPAN_MS`` of them in a row, so a cell that goes
  silent can raise a ``drop`` crowd alert.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any

import h3
import msgspec

from models.next_action.crowd import CellProfile, CrowdAlert, CrowdAnomalyConfig, CrowdAnomalyScorer
from schemas import AnomalyAlert, CellActivity, encode
from stream_app.metrics import Metrics
from stream_app.pipelines.base import Received, Record, StateStore, partition_of
from stream_app.settings import Settings
from stream_app.windows import ActivityWindow, EventTimeWindows, Watermark

__all__ = ["CellEvent", "CellPartition", "CellPipeline", "cell_of", "cell_batches", "decode_cell_events",
           "crowd_alert", "crowd_config", "PARTITION_KEY", "SILENT_SPAN_MS"]

PIPELINE = "cells"
#: The store key of a partition's own state (watermark, replay marks, crowd rhythm): no H3 cell starts with 0x00.
PARTITION_KEY = b"\x00partition"
#: How much event time of silent windows a profiled cell closes in a row before it waits for its next event.
SILENT_SPAN_MS = 6 * 3_600_000


class CellEvent(msgspec.Struct, array_like=True):
    """The part of a user event that cell activity needs (internal topic, compact), and its source:
    the ``user-events`` partition and offset it came from (-1 when unknown: records written before
    sources were added decode with -1, and are never taken for replays)."""

    cell: str
    ts: int
    user_id: str
    action: str
    source_partition: int = -1
    source_offset: int = -1


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
    silent: int = 0  # silent windows closed in a row (absent before they were)


class _StoredPartition(msgspec.Struct, array_like=True):
    """A cell partition's own progress, stored under ``PARTITION_KEY`` beside its cells."""

    latest: dict[int, int]  # per source partition, its largest event time seen (the watermark's input)
    watermark: int | None
    marks: dict[int, int]  # per source partition, the highest source offset counted (the replay mark)
    rhythm: dict[str, list[float] | float] | None = None  # the crowd scorer's population rhythm


_events_encoder, _events_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(list[CellEvent])
_cell_encoder, _cell_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredCell)
_partition_encoder, _partition_decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(_StoredPartition)
#: ``schemas.encode``'s JSON (a default encoder), for many records in one call
_lines_encoder = msgspec.json.Encoder()


def cell_of(lat: float, lon: float, resolution: int) -> str:
    """The H3 cell of a location."""
    cell: str = h3.latlng_to_cell(lat, lon, resolution)
    return cell


def cell_batches(batch: Iterable[Received[Any]], n_partitions: int, resolution: int) -> Iterator[Record]:
    """(key, value) records for ``cell-events``: one per partition of that topic, holding the
    batch's located events of the cells that partition owns (a cell belongs to the partition its
    key hashes to), keyed by one of those cells so it lands there, each with its source partition
    and offset, in the batch's order (offset order per source). One record per partition rather
    than per cell or event keeps both the producer's and the cell pipeline's per-record work small."""
    by_partition: dict[int, tuple[bytes, list[CellEvent]]] = {}
    for received in batch:
        event = received.value
        if event.lat is not None and event.lon is not None:
            cell = cell_of(event.lat, event.lon, resolution)
            key = cell.encode()
            group = by_partition.setdefault(partition_of(key, n_partitions), (key, []))
            group[1].append(CellEvent(cell, event.ts, event.user_id, event.action, received.partition,
                                      received.offset))
    for key, located in by_partition.values():
        yield key, _events_encoder.encode(located)


def decode_cell_events(raw: bytes) -> list[CellEvent]:
    """The events of one ``cell-events`` record."""
    events: list[CellEvent] = _events_decoder.decode(raw)
    return events


class CellPartition:
    """One ``cell-events`` partition's cells and progress (see the module doc), kept in its store.

    ``add`` counts events (replays dropped), ``close`` closes the windows the watermark passed and
    scores them, ``save`` writes the changed cells and the partition's own state back.
    """

    def __init__(self, settings: Settings, store: StateStore, *, sources: int,
                 clock: Callable[[], float] = time.monotonic, own_progress: bool = True) -> None:
        self.store = store
        self.own_progress = own_progress
        self.resolution = settings.h3_resolution
        self.windows: EventTimeWindows[ActivityWindow] = EventTimeWindows(
            size_ms=settings.cell_window_s * 1000, step_ms=settings.cell_step_s * 1000, new_window=ActivityWindow)
        self.profiles: dict[str, CellProfile] = {}
        self.silent: dict[str, int] = {}   # silent windows closed in a row, per profiled cell
        self.marks: dict[int, int] = {}    # replay marks: source partition -> highest offset counted
        self.crowd = CrowdAnomalyScorer(crowd_config(settings))
        self.max_silent = max(1, SILENT_SPAN_MS // (settings.cell_step_s * 1000))
        self._sources, self._clock = sources, clock
        self._grace_ms, self._idle_s = int(settings.grace_s * 1000), settings.watermark_idle_s
        self.watermark = self._watermark({}, None)
        self.dirty: set[str] = set()  # cells changed since the last flush
        self.changed = False          # anything (cells or progress) changed since the last flush
        self._load()

    def add(self, events: Iterable[CellEvent]) -> tuple[set[str], int, int, int]:
        """Count events: (cells changed, late events, replays dropped, events observed).

        Each event goes in every open window of its cell that holds it (``EventTimeWindows.add``
        and ``ActivityWindow.add`` written out here: five windows an event at the default settings,
        where the calls cost more than the counting)."""
        touched: set[str] = set()
        late = replays = observed = 0
        marks, watermark = self.marks, self.watermark
        deduplicate = self.own_progress
        size = self.windows.size_ms
        step = self.windows.step_ms or size
        first = step - size  # the first window holding ts starts at (ts - ts % step) + first
        open_windows, closed_until = self.windows.open, self.windows.closed_until
        for event in events:
            source = event.source_partition
            if deduplicate and event.source_offset >= 0:
                if event.source_offset <= marks.get(source, -1):
                    replays += 1
                    continue
                marks[source] = event.source_offset
            observed += 1
            ts, cell = event.ts, event.cell
            watermark.observe(ts, max(source, 0))
            last = ts - ts % step
            start = last + first
            closed = closed_until.get(cell, -1) - size  # windows starting at or before this have closed
            if start <= closed:
                start = closed + step - (closed - start) % step  # the first one still open
                if start > last:
                    late += 1
                    continue
            windows = open_windows.get(cell)
            if windows is None:
                windows = open_windows[cell] = {}
            user, action = event.user_id, event.action
            while start <= last:
                window = windows.get(start)
                if window is None:
                    window = windows[start] = ActivityWindow()
                window.events += 1
                window.users.add(user)
                actions = window.actions
                actions[action] = actions.get(action, 0) + 1
                start += step
            touched.add(cell)
        return touched, late, replays, observed

    def close(self) -> tuple[list[CellActivity], list[CrowdAlert]]:
        """The windows the watermark passed (silent ones of profiled cells included), in time
        order, and the crowd alerts they raised."""
        watermark = self.watermark.value
        if watermark is None:
            return [], []
        activities, alerts = [], []
        size, resolution = self.windows.size_ms, self.resolution
        silent, profiles, observe = self.silent, self.profiles, self.crowd.observe
        open_windows, closed_until = self.windows.open, self.windows.closed_until
        # EventTimeWindows.close written out: every window ending by the watermark, in time order
        last_start = watermark - size
        done = [(start, cell) for cell, windows in open_windows.items() for start in windows if start <= last_start]
        done += self._silent_windows(watermark)
        done.sort()
        for start, cell in done:
            end = start + size
            if end > closed_until.get(cell, -1):
                closed_until[cell] = end
            windows = open_windows.get(cell)
            window = None if windows is None else windows.pop(start, None)
            if window is None:  # a silent window: no event, the cell has a profile
                activities.append(CellActivity(cell=cell, resolution=resolution, window_start=start,
                                               window_end=end, events=0, users=0))
                silent[cell] = silent.get(cell, 0) + 1
                alert = observe(profiles[cell], cell, start, end, 0, 0)
                if alert is not None:
                    alerts.append(alert)
                continue
            if not windows:
                del open_windows[cell]
            events, users = window.events, len(window.users)
            # the window is closed and dropped: its actions dict goes to the record as it is
            activities.append(CellActivity(cell=cell, resolution=resolution, window_start=start,
                                           window_end=end, events=events, users=users,
                                           actions=window.actions))
            if events:
                silent.pop(cell, None)
            else:
                silent[cell] = silent.get(cell, 0) + 1
            profile = profiles.get(cell)
            if profile is None:
                profile = profiles[cell] = CellProfile()
            alert = observe(profile, cell, start, end, events, users)
            if alert is not None:
                alerts.append(alert)
        return activities, alerts

    def flush(self) -> None:
        """``save`` what changed since the last flush."""
        if self.changed:
            self.save(self.dirty)
            self.dirty, self.changed = set(), False

    def save(self, cells: Iterable[str]) -> None:
        """Write ``cells`` and the partition's own state (watermark, replay marks, rhythm) to the store."""
        for cell in cells:
            self.store[cell.encode()] = self._encode_cell(cell)
        if not self.own_progress:
            return
        latest, value = _watermark_progress(self.watermark)
        self.store[PARTITION_KEY] = _partition_encoder.encode(_StoredPartition(
            latest=latest, watermark=value, marks=dict(self.marks), rhythm=self.crowd.rhythm_state()))

    def _silent_windows(self, watermark: int) -> list[tuple[int, str]]:
        """(start, cell) of the empty windows, up to the watermark, of profiled cells that had no
        event in them: at most ``max_silent`` in a row per cell, so a cell gone for good stops
        costing anything. They end by the watermark: ``close`` closes them at once, so they are
        never opened (no window is built for them)."""
        size = self.windows.size_ms
        step = self.windows.step_ms or size
        last_start = watermark - size
        latest_closed = watermark - step  # a cell that closed a window ending later has none to add
        warm, max_silent, silent = self.crowd.config.warmup_windows, self.max_silent, self.silent
        open_windows, closed_until = self.windows.open, self.windows.closed_until
        found: list[tuple[int, str]] = []
        for cell, profile in self.profiles.items():
            closed = closed_until.get(cell, -1)
            if closed < 0 or closed > latest_closed or profile.seen < warm:
                continue
            room = max_silent - silent.get(cell, 0)
            if room <= 0:
                continue
            start = closed - size + step  # the window after the last one closed
            windows = open_windows.get(cell, {})
            while start <= last_start and room > 0:
                if start not in windows:
                    found.append((start, cell))
                    room -= 1
                start += step
        return found

    def _encode_cell(self, cell: str) -> bytes:
        open_windows = {start: (w.events, sorted(w.users), w.actions)
                        for start, w in self.windows.open.get(cell, {}).items()}
        profile = self.profiles.get(cell)
        return _cell_encoder.encode(_StoredCell(windows=open_windows,
                                                closed_until=self.windows.closed_until.get(cell, -1),
                                                profile=None if profile is None else _store_profile(profile),
                                                silent=self.silent.get(cell, 0)))

    def _load(self) -> None:
        for key, raw in list(self.store.items()):
            if key == PARTITION_KEY:
                stored = _partition_decoder.decode(raw)
                self.marks = dict(stored.marks)
                self.watermark = self._watermark(stored.latest, stored.watermark)
                if stored.rhythm is not None:
                    self.crowd.load_rhythm(stored.rhythm)
                continue
            cell, cell_state = key.decode(), _cell_decoder.decode(raw)
            self.windows.closed_until[cell] = cell_state.closed_until
            if cell_state.profile is not None:
                self.profiles[cell] = _load_profile(cell_state.profile)
            if cell_state.silent:
                self.silent[cell] = cell_state.silent
            for start, (events, users, actions) in cell_state.windows.items():
                self.windows.open.setdefault(cell, {})[start] = ActivityWindow(events, set(users), dict(actions))

    def _watermark(self, latest: dict[int, int], value: int | None) -> Watermark:
        """The watermark over the source partitions, resumed at ``latest``/``value``: every source's
        idle clock starts now, so none is taken for silent just because the partition moved."""
        seen_at = dict.fromkeys(set(range(self._sources)) | set(latest), self._clock()) if latest else {}
        return Watermark(grace_ms=self._grace_ms, idle_s=self._idle_s, partitions=self._sources, clock=self._clock,
                         _max_ts=dict(latest), _seen_at=seen_at, _value=value)


class CellPipeline:
    """Hopping windows of activity per cell, kept per ``cell-events`` partition (:class:`CellPartition`).

    ``load(partition, store)`` (re)builds a partition from its store when it is assigned or
    reloaded, ``drop`` forgets partitions; ``process`` counts one partition's records and returns
    the ``cell-activity`` records of the windows that closed; ``close_windows`` (the transport's
    punctuator) closes what the watermark passed while no record came. ``sources``: partitions of
    ``user-events`` (the watermark waits for each, until it is idle). Crowd alerts wait in
    ``take_alerts``.

    ``write_behind``: changed cells stay in memory and reach the store at ``flush`` (called by the
    transport at the start of each checkpoint, as Kafka Streams' record cache): a busy cell is
    encoded once per checkpoint, not once per batch. Off, every batch writes its cells (the Faust
    path, whose table commits on its own).
    """

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 sources: int | None = None, write_behind: bool = False) -> None:
        self.settings = settings
        self.write_behind = write_behind
        self.sources = sources or settings.partitions
        self.clock = clock
        self.partitions: dict[int, CellPartition] = {}
        self.alerts: list[Record] = []
        self._late = metrics.late_events.labels(pipeline=PIPELINE)
        self._replays = metrics.duplicates.labels(pipeline=PIPELINE)
        self._closed = metrics.windows_closed.labels(kind="cell")
        self._alert_count = metrics.anomaly_alerts.labels(kind="crowd")

    def load(self, partition: int, store: StateStore, *, own_progress: bool = True) -> CellPartition:
        """Build ``partition`` from ``store`` (what a restore left there), replacing what was cached.

        ``own_progress=False`` is for a store shared by several partitions (a Faust table, keyed by
        cell only): the watermark, replay marks and rhythm then live in memory only, and replays
        are not dropped (a mark per source is only right within one partition's ordered stream)."""
        self.partitions[partition] = loaded = CellPartition(self.settings, store, sources=self.sources,
                                                            clock=self.clock, own_progress=own_progress)
        return loaded

    def drop(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.partitions.pop(partition, None)

    def process(self, partition: int, records: Iterable[Sequence[CellEvent]]) -> list[Record]:
        """Count one partition's ``cell-events`` records; the records of every window that closed."""
        cells = self._partition(partition)
        touched, late, replays, observed = cells.add(chain.from_iterable(records))
        if late:
            self._late.inc(late)
        if replays:
            self._replays.inc(replays)
        return self._close(cells, touched, changed=observed > 0)

    def close_windows(self, partitions: Iterable[int] | None = None) -> list[Record]:
        """The records of every window the watermark passed (idle sources no longer hold it back)."""
        closed: list[Record] = []
        for partition in self.partitions if partitions is None else partitions:
            closed += self._close(self._partition(partition), set(), changed=False)
        return closed

    def take_alerts(self) -> list[Record]:
        """The crowd alerts raised since the last call (keyed by cell), for ``anomaly-alerts``."""
        alerts, self.alerts = self.alerts, []
        return alerts

    def flush(self) -> None:
        """Write every loaded partition's changed cells and progress to its store."""
        for cells in self.partitions.values():
            cells.flush()

    @property
    def profiles(self) -> dict[str, CellProfile]:
        """Every loaded partition's cell profiles."""
        return {cell: profile for cells in self.partitions.values() for cell, profile in cells.profiles.items()}

    def _partition(self, partition: int) -> CellPartition:
        try:
            return self.partitions[partition]
        except KeyError:
            raise KeyError(f"cell partition {partition} is not loaded: call load(partition, store) when it is "
                           f"assigned (loaded: {sorted(self.partitions)})") from None

    def _close(self, cells: CellPartition, touched: set[str], *, changed: bool) -> list[Record]:
        activities, alerts = cells.close()
        for alert in alerts:
            self.alerts.append((alert.cell.encode(), encode(crowd_alert(alert))))
        if alerts:
            self._alert_count.inc(len(alerts))
        if activities:
            self._closed.inc(len(activities))
        if changed or activities:
            cells.dirty |= touched
            cells.dirty.update(activity.cell for activity in activities)
            cells.changed = True
            if not self.write_behind:
                cells.flush()
        if not activities:
            return []
        # one call for every record: JSON lines, split at the newlines (JSON escapes any within strings)
        values = _lines_encoder.encode_lines(activities).split(b"\n")
        values.pop()  # empty: after the last newline
        return [(activity.cell.encode(), value) for activity, value in zip(activities, values, strict=True)]


def crowd_config(settings: Settings) -> CrowdAnomalyConfig:
    """Crowd anomaly scoring as the settings configure it."""
    return CrowdAnomalyConfig(alpha=settings.crowd_alert_alpha, min_users=settings.crowd_alert_min_users,
                              utc_offset_hours=settings.crowd_alert_utc_offset_h)


def _watermark_progress(watermark: Watermark) -> tuple[dict[int, int], int | None]:
    """What a restore needs of a watermark: each source's latest event time and its value
    (``Watermark`` takes both back as its ``_max_ts`` and ``_value`` fields)."""
    return dict(watermark._max_ts), watermark._value


def crowd_alert(alert: CrowdAlert) -> AnomalyAlert:
    """The ``anomaly-alerts`` record of a crowd alert (its id names the cell and window: one per window)."""
    critical = alert.p_value < 1e-12
    return AnomalyAlert(alert_id=f"crowd:{alert.cell}:{alert.window_start_ms}", kind="crowd", key=alert.cell,
                        ts=alert.window_end_ms, observed=alert.observed, expected=alert.expected, score=alert.score,
                        severity="critical" if critical else "warning", detail=alert.detail)


def _store_profile(profile: CellProfile) -> _StoredProfile:
    return _StoredProfile(level=list(profile.level), seen=profile.seen, slot_mean=profile.slot_mean_bytes(),
                          slot_seen=profile.slot_seen_bytes(), last_alert_ms=profile.last_alert_ms)


def _load_profile(stored: _StoredProfile) -> CellProfile:
    return CellProfile.from_parts(stored.level, stored.seen, stored.slot_mean, stored.slot_seen, stored.last_alert_ms)
