"""A small located workload for the cell stage's integration tests, the windows it implies, and the
check of ``cell-activity`` against them (hopping windows of 300 s every 60 s, H3 resolution 8)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable

import h3
from aiokafka.partitioner import murmur2

from schemas import CellActivity, decode
from stream_app.windows import window_starts

SIZE_MS, STEP_MS, RESOLUTION = 300_000, 60_000, 8
#: The worker settings these windows assume (a long idle time: windows close because every
#: partition passed them, not because one went quiet).
CELL_ENV = {"STREAM_APP_CELL_WINDOW_S": "300", "STREAM_APP_CELL_STEP_S": "60", "STREAM_APP_H3_RESOLUTION": "8",
            "STREAM_APP_WATERMARK_IDLE_S": "60"}
Window = dict  # {"events": int, "users": set[str], "actions": dict[str, int]}


def located_events(seed: int, count: int, users: int, start_ms: int, id_prefix: str) -> list[dict]:
    """``count`` events 10 s apart at three spots, from ``users`` users, in time order."""
    rng = random.Random(seed)
    spots = [(40.70, -74.00), (40.75, -73.98), (40.80, -73.95)]
    events = []
    for k in range(count):
        lat, lon = rng.choice(spots)
        events.append({"event_id": f"{id_prefix}{k}", "user_id": f"u{rng.randrange(users)}",
                       "ts": start_ms + k * 10_000, "action": rng.choice(["view", "buy", "like"]),
                       "lat": lat, "lon": lon})
    return events


def closers(ts: int, partitions: int = 2) -> list[dict]:
    """A far-away event in each partition of the cell topic from each partition of user-events (Kafka's
    default murmur2 partitioner): a cell partition's watermark waits for every source partition."""
    def partition_of(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions

    users = {partition_of(f"closer-u{k}"): f"closer-u{k}" for k in range(100)}
    cells = {partition_of(h3.latlng_to_cell(10.0 + k * 0.1, 10.0, RESOLUTION)): (10.0 + k * 0.1, 10.0)
             for k in range(100)}
    if len(users) < partitions or len(cells) < partitions:
        raise AssertionError("no user or cell found for every partition")
    return [{"event_id": f"closer-{u}-{c}", "user_id": users[u], "ts": ts, "action": "view", "lat": cells[c][0],
             "lon": cells[c][1]} for u in range(partitions) for c in range(partitions)]


def expected_windows(events: list[dict]) -> dict[tuple[str, int], Window]:
    """Every (cell, window start) the events fall in, counted directly."""
    expected: dict[tuple[str, int], Window] = defaultdict(lambda: {"events": 0, "users": set(),
                                                                   "actions": defaultdict(int)})
    for e in events:
        cell = h3.latlng_to_cell(e["lat"], e["lon"], RESOLUTION)
        for start in window_starts(e["ts"], SIZE_MS, STEP_MS):
            window = expected[(cell, start)]
            window["events"] += 1
            window["users"].add(e["user_id"])
            window["actions"][e["action"]] += 1
    return expected


def check_cell_windows(records: Iterable, expected: dict[tuple[str, int], Window]) -> None:
    """``cell-activity`` holds each expected window once, keyed by its cell, with the direct counts;
    the only others are a profiled cell's silent windows, after its last event."""
    got = {}
    for record in records:
        activity = decode(record.value, CellActivity)
        assert isinstance(activity, CellActivity) and record.key == activity.cell.encode()
        assert (activity.cell, activity.window_start) not in got, "each window emitted once"
        if activity.events == 0:  # a profiled cell's silent window (issue 13): only after its last event
            assert activity.window_start > max(start for cell, start in expected if cell == activity.cell)
            continue
        got[(activity.cell, activity.window_start)] = activity
    assert set(got) == set(expected), (sorted(set(got) - set(expected)), sorted(set(expected) - set(got)))
    for key, activity in got.items():
        want = expected[key]
        assert (activity.events, activity.users, activity.actions) == \
            (want["events"], len(want["users"]), dict(want["actions"]))
        assert activity.window_end - activity.window_start == SIZE_MS and activity.resolution == RESOLUTION
