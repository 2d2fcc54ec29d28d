"""Readers that turn the shared real data sets into wire-schema events in event-time order, and a pacer."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream_app import datasets
from stream_app.exceptions import ConfigError

__all__ = ["read_foursquare", "read_diginetica", "read_los_loop", "replay_schedule"]

logger = logging.getLogger(__name__)

Event = dict[str, Any]  # one wire-format event (user event or road reading) as JSON-ready values

_FOURSQUARE_EPOCH_MS = int(datetime(2012, 4, 3, 18, tzinfo=UTC).timestamp() * 1000)  # as models.next_action.datasets
_LOS_LOOP_EPOCH_MS = int(datetime(2012, 3, 1, tzinfo=UTC).timestamp() * 1000)
_LOS_LOOP_STEP_MS = 5 * 60_000


def _dataset_dir(data_dir: Path | str | None, name: str) -> Path:
    """The named set's folder: ``data_dir`` first when given (a folder holding the set, or the set's folder
    itself), then the cache, STREAM_APP_DATA_DIR and ../shared/data; missing: a DatasetError naming the fix."""
    return datasets.locate(name, first=None if data_dir is None else Path(data_dir))


def _epoch_ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def _user_event(event_id: str, user_id: str, ts: int, action: str, item_id: str,
                session_id: str | None = None, lat: float | None = None,
                lon: float | None = None, properties: dict[str, Any] | None = None) -> Event:
    return {"event_id": event_id, "user_id": user_id, "ts": ts, "action": action,
            "item_id": item_id, "category": None, "lat": lat, "lon": lon,
            "session_id": session_id, "properties": properties or {}}


def read_foursquare(data_dir: Path | str | None = None) -> Iterator[Event]:
    """Foursquare NYC check-ins; action ``poi:<id>`` so a next-action model predicts POIs.

    ts = 2012-04-03T00:00Z + the file's minutes; ties keep file order; event_id ``fsq-<row>``.
    The folder is looked up now (a missing set fails here); events are read as they are iterated.
    """
    return _foursquare_events(_dataset_dir(data_dir, "foursquare"))


def _foursquare_events(folder: Path) -> Iterator[Event]:
    checkins = np.load(folder / "NYC.npy")
    pois = np.load(folder / "NYC_POI.npy")
    where = {int(poi): (lat, lon) for poi, lat, lon in pois.tolist()}
    order = np.argsort(checkins[:, 2], kind="stable")
    for row, (user, poi, minutes) in zip(order.tolist(), checkins[order].tolist(), strict=True):
        lat, lon = where.get(poi, (None, None))
        yield _user_event(f"fsq-{row}", str(user), _FOURSQUARE_EPOCH_MS + minutes * 60_000,
                          f"poi:{poi}", str(poi), lat=lat, lon=lon)


def read_diginetica(data_dir: Path | str | None = None) -> Iterator[Event]:
    """Diginetica item views; the session is the user (user ids are mostly missing), action ``item:<id>``.

    ts = eventdate (UTC midnight) + timeframe ms; ties keep file order; event_id ``dgn-<row>``.
    """
    return _diginetica_events(_dataset_dir(data_dir, "diginetica") / "sample_train-item-views.csv")


def _diginetica_events(path: Path) -> Iterator[Event]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    stamps = [_epoch_ms(row["eventdate"]) + int(row["timeframe"]) for row in rows]
    for i in sorted(range(len(rows)), key=stamps.__getitem__):
        row = rows[i]
        known_user = row["user_id"] not in ("", "NA")
        yield _user_event(f"dgn-{i}", row["session_id"], stamps[i], f"item:{row['item_id']}",
                          row["item_id"], session_id=row["session_id"],
                          properties={"user_id": row["user_id"]} if known_user else None)


def read_los_loop(data_dir: Path | str | None = None, network: str = "los-loop") -> Iterator[Event]:
    """Los Angeles loop speeds (mph): one reading per sensor per 5-minute step from 2012-03-01T00:00Z."""
    return _los_loop_readings(_dataset_dir(data_dir, "los-loop") / "los_speed.csv", network)


def _los_loop_readings(path: Path, network: str) -> Iterator[Event]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        sensors = [name.strip() for name in next(reader)]
        for step, values in enumerate(reader):
            ts = _LOS_LOOP_EPOCH_MS + step * _LOS_LOOP_STEP_MS
            for sensor, value in zip(sensors, values, strict=True):
                yield {"sensor_id": sensor, "network": network, "ts": ts, "speed": float(value),
                       "flow": None, "occupancy": None, "lat": None, "lon": None}


def replay_schedule(events: Iterable[Event], speedup: float, *,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """Yield events paced by event time / ``speedup`` (0 or inf: as fast as possible).

    The first event anchors the schedule; an event older than one already sent is not delayed.
    ``clock`` returns seconds, ``sleep`` takes seconds.
    """
    if math.isnan(speedup) or speedup < 0:
        raise ConfigError(f"replay_schedule: speedup must be >= 0 (0 or inf = unpaced), got {speedup}")
    if speedup == 0 or math.isinf(speedup):
        yield from events
        return
    anchor: tuple[int, float] | None = None
    for event in events:
        anchor = anchor or (event["ts"], clock())
        wait = anchor[1] + (event["ts"] - anchor[0]) / 1000.0 / speedup - clock()
        if wait > 0:
            sleep(wait)
        yield event
