"""Simulated users: determinism, schema validity, the intent signal."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simulation.clock import HOUR_MS, SimulationConfigError
from simulation.users import ACTIONS, BehaviorConfig, generate_user_events, iter_user_events

USER_KEYS = {"event_id", "user_id", "ts", "action", "item_id", "category", "lat", "lon",
             "session_id", "properties"}
SMALL = BehaviorConfig(n_users=40, n_events=3_000, seed=11)


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
    for event, intent in zip(large.events, large.event_intents.tolist(), strict=False):
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
        with pytest.raises(SimulationConfigError):
            BehaviorConfig(**bad)
    with pytest.raises(SimulationConfigError):
        generate_user_events(BehaviorConfig(n_events=None))


# --------------------------------------------------------------------------- injections and habit logs

def test_takeover_switches_the_users_behavior_from_its_start():
    from simulation.clock import DAY_MS
    from simulation.users import DEFAULT_START_MS, Takeover

    at = DEFAULT_START_MS + DAY_MS
    base = BehaviorConfig(n_users=40, n_events=6_000, seed=11)
    taken = generate_user_events(BehaviorConfig(n_users=40, n_events=6_000, seed=11,
                                                takeovers=(Takeover(user=5, start_ms=at),)))
    clean = generate_user_events(base)
    rows = [i for i, e in enumerate(taken.events) if e["user_id"] == "user-00005"]
    flags = taken.intruder[rows]
    assert flags.any() and not flags[:np.argmax(flags)].any() and flags[np.argmax(flags):].all()
    first = rows[int(np.argmax(flags))]
    assert taken.events[first]["ts"] >= at
    before = [e for e in taken.events if e["user_id"] == "user-00005" and e["ts"] < at]
    assert before == [e for e in clean.events if e["user_id"] == "user-00005" and e["ts"] < at]
    assert not taken.intruder[[i for i, e in enumerate(taken.events) if e["user_id"] != "user-00005"]].any()
    np.testing.assert_allclose(taken.true_next.sum(axis=1), 1.0, atol=1e-5)
    # the intruder's own flows: its true next-action rows differ from the clean model's for the same action
    assert not np.allclose(taken.true_next[rows][flags].mean(axis=0), clean.true_next.mean(axis=0), atol=0.02)
    with pytest.raises(SimulationConfigError):
        BehaviorConfig(n_users=3, takeovers=(Takeover(user=3, start_ms=at),))


def test_inject_gathering_adds_crowd_events_in_time_order():
    from simulation.users import Gathering, inject_gathering

    events = generate_user_events(SMALL).events
    start = events[len(events) // 2]["ts"]
    crowd = Gathering(lat=42.3, lon=-83.7, start_ms=start, end_ms=start + 2 * HOUR_MS, visitors=30, seed=4)
    merged = inject_gathering(events, crowd)
    added = [e for e in merged if e["properties"].get("injected") == "gathering"]
    assert len(merged) == len(events) + len(added) and 30 * 8 * 0.6 < len(added) < 30 * 8 * 1.4
    assert [e["ts"] for e in merged] == sorted(e["ts"] for e in merged)
    assert [e for e in merged if "injected" not in e["properties"]] == events
    assert all(start <= e["ts"] < start + 2 * HOUR_MS and abs(e["lat"] - 42.3) < 0.001 for e in added)
    assert len({e["user_id"] for e in added}) == 30 and set(added[0]) == USER_KEYS
    assert inject_gathering(events, crowd) == merged
    with pytest.raises(SimulationConfigError):
        Gathering(lat=0, lon=0, start_ms=5, end_ms=5)


def test_habit_logs_have_habits_or_never_repeat():
    from simulation.users import HabitConfig, habit_events

    habits = habit_events(HabitConfig(n_users=30, events_per_user=100, seed=2))
    assert [e["ts"] for e in habits] == sorted(e["ts"] for e in habits) and len(habits) == 3_000
    by_user: dict[str, list[str]] = {}
    for event in habits:
        by_user.setdefault(event["user_id"], []).append(event["action"])
    top3 = np.mean([sum(sorted((a.count(x) for x in set(a)), reverse=True)[:3]) / len(a) for a in by_user.values()])
    assert top3 > 0.7                                   # most events are one of the user's habits
    ratings = habit_events(HabitConfig(n_users=30, events_per_user=40, n_actions=400, repeat=False, seed=2))
    per_user: dict[str, list[str]] = {}
    for event in ratings:
        per_user.setdefault(event["user_id"], []).append(event["action"])
    assert all(len(set(a)) == len(a) == 40 for a in per_user.values())
    assert habit_events(HabitConfig(n_users=3, events_per_user=5)) == habit_events(HabitConfig(n_users=3,
                                                                                               events_per_user=5))
    with pytest.raises(SimulationConfigError):
        HabitConfig(n_actions=50, events_per_user=40, repeat=False)
