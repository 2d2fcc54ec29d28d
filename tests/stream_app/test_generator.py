"""Synthetic workloads: determinism, schema validity, the intent signal, traffic realism."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from stream_app.exceptions import ConfigError
from stream_app.generator import (
    ACTIONS, BehaviorConfig, Incident, TrafficConfig, generate_traffic, generate_user_events,
    iter_traffic_readings, iter_user_events,
)

USER_KEYS = {"event_id", "user_id", "ts", "action", "item_id", "category", "lat", "lon",
             "session_id", "properties"}
READING_KEYS = {"sensor_id", "network", "ts", "speed", "flow", "occupancy", "lat", "lon"}
SMALL = BehaviorConfig(n_users=40, n_events=3_000, seed=11)
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def small():
    return generate_user_events(SMALL)


@pytest.fixture(scope="module")
def large():
    return generate_user_events(BehaviorConfig(n_users=150, n_events=15_000, seed=3))


def _next_actions(workload) -> np.ndarray:
    index = {name: i for i, name in enumerate(workload.actions)}
    following = np.full(len(workload.events), -1)
    last: dict[str, int] = {}
    for i, event in enumerate(workload.events):
        if event["user_id"] in last:
            following[last[event["user_id"]]] = index[event["action"]]
        last[event["user_id"]] = i
    return following


def _acc_true_vs_markov(workload) -> tuple[float, float]:
    index = {name: i for i, name in enumerate(workload.actions)}
    current = np.array([index[e["action"]] for e in workload.events])
    following = _next_actions(workload)
    train = np.arange(len(current)) < int(0.8 * len(current))
    counts = np.zeros((len(index), len(index)))
    np.add.at(counts, (current[train & workload.has_next], following[train & workload.has_next]), 1)
    test = ~train & workload.has_next
    markov = (counts[current[test]].argmax(axis=1) == following[test]).mean()
    true = (workload.true_next[test].argmax(axis=1) == following[test]).mean()
    return float(true), float(markov)


# --------------------------------------------------------------------------- behavior

def test_same_config_same_output(small):
    again = generate_user_events(SMALL)
    assert again.events == small.events
    np.testing.assert_array_equal(again.true_next, small.true_next)
    other = generate_user_events(BehaviorConfig(n_users=40, n_events=3_000, seed=12))
    assert other.events != small.events


def test_events_sorted_and_interleaved(small):
    ts = [e["ts"] for e in small.events]
    assert ts == sorted(ts)
    assert len({e["event_id"] for e in small.events}) == len(small.events)
    first_hundred = {e["user_id"] for e in small.events[:100]}
    assert len(first_hundred) > 5


def test_events_match_the_wire_schema(small):
    for event in small.events:
        assert set(event) == USER_KEYS
        assert isinstance(event["ts"], int) and event["ts"] > 946_684_800_000
        assert event["action"] in ACTIONS and event["session_id"]
        assert (event["lat"] is None) == (event["lon"] is None)
        assert all(isinstance(v, (str, int, float, bool)) for v in event["properties"].values())
    located = [e for e in small.events if e["lat"] is not None]
    assert len(located) > 0.7 * len(small.events)
    assert all(type(e["lat"]) is float and abs(e["lat"] - SMALL.center_lat) < 0.15 for e in located)
    assert all(abs(e["lon"] - SMALL.center_lon) < 0.2 for e in located)
    viewed = [e for e in small.events if e["action"] == "view_item"]
    assert viewed and all(e["item_id"] and e["category"] for e in viewed)


def test_true_next_is_a_distribution(small):
    assert small.true_next.shape == (len(small.events), len(small.actions))
    assert small.true_next.dtype == np.float32
    assert (small.true_next >= 0).all()
    np.testing.assert_allclose(small.true_next.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(small.has_next, _next_actions(small) >= 0)
    assert (~small.has_next).sum() == len({e["user_id"] for e in small.events})


def test_sessions_have_realistic_gaps(small):
    by_user: dict[str, list[dict]] = {}
    for event in small.events:
        by_user.setdefault(event["user_id"], []).append(event)
    within, between = [], []
    for events in by_user.values():
        for a, b in itertools.pairwise(events):
            (within if a["session_id"] == b["session_id"] else between).append(b["ts"] - a["ts"])
    assert 1_000 <= np.median(within) <= 5 * 60_000
    assert min(between) >= SMALL.min_session_gap_s * 1000
    assert np.median(between) >= HOUR_MS / 2


def test_daytime_busier_than_night(large):
    hours = (np.array([e["ts"] for e in large.events]) + -5 * HOUR_MS) % 86_400_000 // HOUR_MS
    assert (hours == 20).sum() > 5 * (hours == 3).sum()


def test_true_distribution_beats_first_order_markov(large):
    true, markov = _acc_true_vs_markov(large)
    assert true >= markov + 0.05, (true, markov)


def test_true_next_is_calibrated(large):
    """Summed over events, the true rows predict how often each action comes next."""
    following = _next_actions(large)
    expected = large.true_next[large.has_next].mean(axis=0)
    observed = np.bincount(following[large.has_next], minlength=len(large.actions)) / large.has_next.sum()
    assert np.abs(expected - observed).sum() < 0.06


def test_intent_changes_what_follows(large):
    """The same last action leads elsewhere under different intents."""
    rows = large.true_next[[i for i, e in enumerate(large.events) if e["action"] == "view_item"]]
    likeliest = {large.actions[int(np.argmax(r))] for r in rows}
    assert {"view_reviews", "add_to_cart", "share", "home_feed"} <= likeliest


def test_first_action_of_a_session_names_its_intent(large):
    """Entry actions are disjoint across intents, so the intent is visible in the events."""
    intent_of: dict[str, set[int]] = {}
    session_of: dict[str, str] = {}
    for event, intent in zip(large.events, large.event_intents.tolist()):
        if session_of.get(event["user_id"]) != event["session_id"]:
            session_of[event["user_id"]] = event["session_id"]
            intent_of.setdefault(event["action"], set()).add(intent)
    assert all(len(intents) == 1 for intents in intent_of.values()), intent_of
    assert set().union(*intent_of.values()) == set(range(len(large.intents)))


def test_iterator_streams_the_same_events_and_never_ends():
    prefix = list(itertools.islice(iter_user_events(SMALL), 500))
    assert prefix == generate_user_events(BehaviorConfig(n_users=40, n_events=500, seed=11)).events
    endless = iter_user_events(BehaviorConfig(n_users=3, n_events=None, seed=1))
    events = list(itertools.islice(endless, 3_000))
    assert len(events) == 3_000 and events[-1]["ts"] - events[0]["ts"] > 3 * 86_400_000
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))


def test_fewer_intents_and_bad_configs():
    three = generate_user_events(BehaviorConfig(n_users=10, n_events=300, n_intents=3))
    assert set(three.event_intents.tolist()) <= {0, 1, 2} and three.intents == ["browse", "research", "buy"]
    for bad in ({"n_users": 0}, {"n_intents": 9}, {"radius_km": 0.0}, {"n_events": -1}):
        with pytest.raises(ConfigError):
            BehaviorConfig(**bad)
    with pytest.raises(ConfigError):
        generate_user_events(BehaviorConfig(n_events=None))


# --------------------------------------------------------------------------- traffic

TRAFFIC = TrafficConfig(n_sensors=16, seed=5, duration_hours=30.0, incident_rate_per_day=2.0,
                        dropout_prob=0.01, n_dead_sensors=1)


@pytest.fixture(scope="module")
def traffic():
    return generate_traffic(TRAFFIC)


def _speeds(workload, start_ms: int, interval_ms: int = 60_000) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {}
    for r in workload.readings:
        table.setdefault(r["sensor_id"], {})[(r["ts"] - start_ms) // interval_ms] = r["speed"]
    return table


def test_traffic_same_config_same_output(traffic):
    assert generate_traffic(TRAFFIC) == traffic
    other = generate_traffic(TrafficConfig(n_sensors=16, seed=6, duration_hours=30.0))
    assert other.readings != traffic.readings


def test_readings_sorted_and_schema_valid(traffic):
    ts = [r["ts"] for r in traffic.readings]
    assert ts == sorted(ts)
    for r in traffic.readings:
        assert set(r) == READING_KEYS and r["network"] == TRAFFIC.network
        assert isinstance(r["ts"], int) and isinstance(r["speed"], float) and r["speed"] >= 0
        assert r["flow"] is None or r["flow"] >= 0
        assert r["occupancy"] is None or 0.0 <= r["occupancy"] <= 1.0
        assert -90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180


def test_network_geometry(traffic):
    assert len(traffic.sensors) == 16
    lengths = [km for _, _, km in traffic.edges]
    assert len(lengths) == 16 - TRAFFIC.n_corridors
    assert 0.4 <= min(lengths) and max(lengths) <= 1.3


def test_dead_sensor_and_dropouts(traffic):
    (dead,) = traffic.dead_sensors
    reporting = {r["sensor_id"] for r in traffic.readings}
    assert dead not in reporting and len(reporting) == 15
    full = 15 * 30 * 60
    assert 0.97 * full <= len(traffic.readings) < full


def test_rush_hour_slower_than_night(traffic):
    hours = np.array([(r["ts"] + -5 * HOUR_MS) % 86_400_000 // HOUR_MS for r in traffic.readings])
    speed = np.array([r["speed"] for r in traffic.readings])
    occupancy = np.array([np.nan if r["occupancy"] is None else r["occupancy"] for r in traffic.readings])
    rush, night = np.isin(hours, (8, 17)), np.isin(hours, (2, 3))
    assert speed[rush].mean() < speed[night].mean() - 8
    assert 58 <= np.median(speed[night]) <= 67
    assert np.nanmean(occupancy[rush]) > 2 * np.nanmean(occupancy[night])


def test_weekend_is_lighter():
    saturday = TrafficConfig(n_sensors=8, duration_hours=24.0, start_ms=TrafficConfig().start_ms + 5 * 86_400_000,
                             incident_rate_per_day=0.0)
    monday = TrafficConfig(n_sensors=8, duration_hours=24.0, incident_rate_per_day=0.0)
    speeds = [min(r["speed"] for r in generate_traffic(c).readings) for c in (monday, saturday)]
    assert speeds[0] < speeds[1] - 5


def test_incident_depresses_its_sensor_and_upstream():
    base = TrafficConfig(n_sensors=12, n_corridors=2, duration_hours=4.0, incident_rate_per_day=0.0,
                         dropout_prob=0.0, speed_only_fraction=0.0)
    upstream, sensor, _ = generate_traffic(base).edges[2]
    start = base.start_ms + 2 * HOUR_MS  # 02:00 local, free flow
    incident = Incident(sensor_id=sensor, start_ms=start, end_ms=start + 40 * 60_000, severity=0.8)
    hit = generate_traffic(dataclasses.replace(base, incidents=(incident,)))
    assert hit.incidents == [incident]
    calm, jam = _speeds(generate_traffic(base), base.start_ms), _speeds(hit, base.start_ms)
    window = range(125, 160)
    drop = [np.mean([t[s][k] for k in window]) for t in (calm, jam) for s in (sensor, upstream)]
    assert drop[2] < 0.5 * drop[0]                     # the incident sensor slows sharply
    assert drop[2] < drop[3] < drop[1] - 5             # upstream slows too, but less


def test_traffic_iterator_matches_and_never_ends(traffic):
    prefix = list(itertools.islice(iter_traffic_readings(TRAFFIC), 2_000))
    assert prefix == traffic.readings[:2_000]
    endless = iter_traffic_readings(TrafficConfig(n_sensors=4, n_corridors=1, duration_hours=None))
    readings = list(itertools.islice(endless, 4 * 60 * 30))
    assert readings[-1]["ts"] - readings[0]["ts"] > 25 * HOUR_MS


def test_traffic_bad_configs():
    with pytest.raises(ConfigError):
        TrafficConfig(dropout_prob=1.5)
    with pytest.raises(ConfigError):
        generate_traffic(TrafficConfig(duration_hours=None))
    ghost = Incident(sensor_id="nope", start_ms=0, end_ms=1, severity=0.5)
    with pytest.raises(ConfigError):
        generate_traffic(TrafficConfig(n_sensors=4, duration_hours=1.0, incidents=(ghost,)))
