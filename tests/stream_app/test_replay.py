"""Real-data readers (counts, order, schema) and the event-time pacer (fake clock, no sleeping)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.datasets import DatasetError
from stream_app.exceptions import ConfigError
from stream_app.replay import read_diginetica, read_foursquare, read_los_loop, replay_schedule

USER_KEYS = {"event_id", "user_id", "ts", "action", "item_id", "category", "lat", "lon",
             "session_id", "properties"}
READING_KEYS = {"sensor_id", "network", "ts", "speed", "flow", "occupancy", "lat", "lon"}


def _sorted_by_ts(events: list[dict]) -> bool:
    return all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))


@pytest.fixture(scope="module")
def foursquare(shared_data) -> list[dict]:
    return list(read_foursquare(shared_data))


@pytest.mark.data
def test_foursquare_checkins(foursquare):
    assert len(foursquare) == 147_938
    assert _sorted_by_ts(foursquare)
    assert set(foursquare[0]) == USER_KEYS
    assert len({e["user_id"] for e in foursquare}) == 1_083
    assert len({e["action"] for e in foursquare}) == 5_135
    assert len({e["event_id"] for e in foursquare}) == len(foursquare)
    first = foursquare[0]
    assert first["action"] == f"poi:{first['item_id']}" and first["ts"] >= 1_333_411_200_000
    assert all(40.4 < e["lat"] < 41.0 and -74.3 < e["lon"] < -73.6 for e in foursquare[::97])
    days = (foursquare[-1]["ts"] - foursquare[0]["ts"]) / 86_400_000
    assert 300 < days < 330


@pytest.mark.data
def test_diginetica_views(shared_data):
    events = list(read_diginetica(shared_data))
    assert len(events) == 12_391  # data rows in the file (the README's 12,390 is one short)
    assert _sorted_by_ts(events)
    assert all(set(e) == USER_KEYS for e in events)
    assert len({e["session_id"] for e in events}) == 2_986
    assert len({e["item_id"] for e in events}) == 7_139
    assert all(e["user_id"] == e["session_id"] and e["action"] == f"item:{e['item_id']}" for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    assert events[0]["ts"] >= 1_451_606_400_000 and events[-1]["ts"] < 1_467_331_200_000  # 2016 H1


@pytest.mark.data
def test_los_loop_readings(shared_data):
    readings = list(read_los_loop(shared_data))
    assert len(readings) == 2_016 * 207
    assert _sorted_by_ts(readings)
    assert all(set(r) == READING_KEYS and r["network"] == "los-loop" for r in readings[:207])
    assert readings[0]["ts"] == 1_330_560_000_000  # 2012-03-01T00:00Z
    assert readings[-1]["ts"] == 1_330_560_000_000 + 2_015 * 300_000
    assert len({r["sensor_id"] for r in readings[:207]}) == 207
    assert all(1.0 <= r["speed"] <= 70.0 for r in readings[::101])


@pytest.mark.data
def test_readers_accept_the_dataset_folder_itself(foursquare, shared_data):
    direct = list(itertools.islice(read_foursquare(shared_data / "foursquare-nyc"), 10))
    assert direct == foursquare[:10]


def test_a_missing_set_fails_when_the_reader_is_called_and_names_the_fetch_command(no_local_data):
    with pytest.raises(DatasetError, match="stream-app datasets fetch los-loop"):
        read_los_loop()  # not iterated: the lookup happens at the call, before any broker is started


class FakeClock:
    """Seconds that only move when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _events(*ts: int) -> list[dict]:
    return [{"event_id": str(i), "ts": t} for i, t in enumerate(ts)]


def test_replay_paces_by_event_time():
    clock = FakeClock()
    out = list(replay_schedule(_events(0, 1_000, 1_000, 3_000), 2.0, clock=clock, sleep=clock.sleep))
    assert [e["event_id"] for e in out] == ["0", "1", "2", "3"]
    assert clock.sleeps == pytest.approx([0.5, 1.0])


def test_replay_does_not_wait_for_late_or_slow_consumers():
    clock = FakeClock()
    paced = replay_schedule(_events(0, 10_000, 5_000, 12_000), 1.0, clock=clock, sleep=clock.sleep)
    next(paced)
    clock.now += 11.0  # the consumer itself took 11 s
    assert [e["ts"] for e in paced] == [10_000, 5_000, 12_000]
    assert clock.sleeps == pytest.approx([1.0])


@pytest.mark.parametrize("speedup", [0.0, math.inf])
def test_replay_unpaced(speedup: float):
    clock = FakeClock()
    out = list(replay_schedule(_events(0, 60_000, 120_000), speedup, clock=clock, sleep=clock.sleep))
    assert len(out) == 3 and clock.sleeps == []


@pytest.mark.parametrize("speedup", [-1.0, math.nan])
def test_replay_rejects_bad_speedup(speedup: float):
    with pytest.raises(ConfigError):
        list(replay_schedule(_events(0), speedup))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=30), st.floats(0.1, 1_000.0))
def test_replay_total_wait_is_the_event_time_span(gaps: list[int], speedup: float):
    stamps = list(itertools.accumulate(gaps))
    clock = FakeClock()
    list(replay_schedule(_events(*stamps), speedup, clock=clock, sleep=clock.sleep))
    assert clock.now - 100.0 == pytest.approx((stamps[-1] - stamps[0]) / 1000 / speedup, rel=1e-9, abs=1e-9)
