"""Behavior and crowd anomaly scoring: runs alert, single spikes and clean streams do not, rate limits hold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.exceptions import ModelError
from models.next_action.anomaly import (
    BehaviorAlert,
    BehaviorAnomalyConfig,
    BehaviorAnomalyScorer,
    PopulationSurprisal,
    SurpriseState,
    SurprisingEvent,
)
from models.next_action.crowd import CellProfile, CrowdAnomalyConfig, CrowdAnomalyScorer, _upper_tail, week_slot
from tests.models.next_action.test_crowd import score_windows

T0 = 1_709_528_400_000  # a Monday 05:00 UTC
MINUTE_MS = 60_000
POPULATION = PopulationSurprisal(mean=1.3, std=0.8)


def _normal_stream(scorer: BehaviorAnomalyScorer, state: SurpriseState, n: int, rng: np.random.Generator,
                   start_ms: int = T0) -> list:
    surprisals = np.clip(rng.gamma(2.0, 0.65, size=n), 0.01, None)   # mean 1.3, a right tail like real ones
    events = [(f"a{i % 7}", start_ms + i * MINUTE_MS, float(s)) for i, s in enumerate(surprisals)]
    return scorer.score_many(state, events)


def test_a_run_of_improbable_actions_alerts_with_its_evidence() -> None:
    scorer, state = BehaviorAnomalyScorer(POPULATION), SurpriseState()
    assert _normal_stream(scorer, state, 400, np.random.default_rng(0)) == []
    run = [("transfer", T0 + 10_000 * MINUTE_MS + i, 7.0) for i in range(6)]
    alerts = scorer.score_many(state, run)
    assert len(alerts) == 1
    alert = alerts[0]
    fired_at = [ts for _, ts, _ in run].index(alert.ts_ms) + 1
    assert 3 <= fired_at <= 4                                   # a few events, never one alone
    assert [e.token for e in alert.events][-fired_at:] == ["transfer"] * fired_at
    assert alert.events[-1].probability == pytest.approx(np.exp(-7.0))
    assert alert.score >= alert.threshold and alert.observed > alert.expected
    assert "transfer" in alert.detail


def test_one_improbable_action_alone_never_alerts() -> None:
    scorer, state = BehaviorAnomalyScorer(POPULATION), SurpriseState()
    rng = np.random.default_rng(1)
    for block in range(20):
        assert _normal_stream(scorer, state, 30, rng, T0 + block * 100 * MINUTE_MS) == []
        assert scorer.score(state, "rare", T0 + (block * 100 + 50) * MINUTE_MS, 25.0) is None


def test_alerts_are_rate_limited_per_user() -> None:
    config = BehaviorAnomalyConfig(min_gap_s=3_600)
    scorer, state = BehaviorAnomalyScorer(POPULATION, config), SurpriseState()
    _normal_stream(scorer, state, 200, np.random.default_rng(2))
    start = T0 + 1_000 * MINUTE_MS

    def run(at_ms: int) -> list:
        return scorer.score_many(state, [("x", at_ms + i * 1000, 8.0) for i in range(5)])

    assert len(run(start)) == 1
    assert run(start + 10 * MINUTE_MS) == []                    # within the silence
    assert len(run(start + 61 * MINUTE_MS)) == 1                # after it


def test_a_new_user_is_measured_against_the_population() -> None:
    scorer = BehaviorAnomalyScorer(POPULATION)
    mean, std = scorer.expected(SurpriseState())
    assert (mean, std) == pytest.approx((1.3, 0.8))
    state = SurpriseState()
    scorer.score_many(state, [("a", T0 + i, 0.2) for i in range(500)])   # a very predictable user
    mean, _ = scorer.expected(state)
    assert mean < 0.3
    alerts = scorer.score_many(state, [("b", T0 + 10**9 + i, 3.0) for i in range(6)])
    assert alerts, "what is ordinary for the population is a run for this user"


def _score_by_definition(scorer: BehaviorAnomalyScorer, state: SurpriseState, token: str, ts_ms: int,
                         surprisal: float) -> BehaviorAlert | None:
    """``score`` as the module doc defines it, through ``expected`` and ``_learn`` (what the written-out
    per-event arithmetic must reproduce bit for bit)."""
    config = scorer.config
    if not math.isfinite(surprisal):
        surprisal = -math.log(1e-12)
    mean, std = scorer.expected(state)
    state.cusum = max(0.0, state.cusum + min(config.z_cap, (surprisal - mean) / std) - config.reference)
    if state.cusum > 0:
        state.run = (state.run + [SurprisingEvent(token, ts_ms, math.exp(-surprisal))])[-config.max_evidence:]
    else:
        state.run = []
    scorer._learn(state, surprisal)
    if state.cusum < config.threshold:
        return None
    silent = state.last_alert_ms is not None and ts_ms - state.last_alert_ms < config.min_gap_s * 1000
    alert = None if silent else BehaviorAlert(ts_ms, state.cusum, config.threshold, tuple(state.run), mean, std)
    state.cusum, state.run = 0.0, []
    if alert is not None:
        state.last_alert_ms = ts_ms
    return alert


@pytest.mark.parametrize("config", [BehaviorAnomalyConfig(), BehaviorAnomalyConfig(threshold=2.5, max_evidence=2,
                                                                                    memory_events=20, min_gap_s=60)])
def test_score_is_bit_equal_to_its_definition(config: BehaviorAnomalyConfig) -> None:
    rng = np.random.default_rng(5)
    scorer = BehaviorAnomalyScorer(POPULATION, config)
    fast, reference = SurpriseState(), SurpriseState()
    alerts = 0
    for i in range(3000):
        improbable = i % 97 < 12 or rng.random() < 0.05  # runs of improbable actions, and some alone
        surprisal = float(rng.choice([9.0, 30.0, np.inf])) if improbable else float(rng.gamma(2.0, 0.65))
        ts = T0 + i * 20_000
        got = scorer.score(fast, f"a{i % 5}", ts, surprisal)
        assert got == _score_by_definition(scorer, reference, f"a{i % 5}", ts, surprisal)
        assert fast == reference and fast.to_bytes() == reference.to_bytes()
        alerts += got is not None
    assert alerts > 5, "the stream must exercise alerts, runs longer than max_evidence and silences"


def test_surprise_state_round_trip_and_config_checks() -> None:
    scorer, state = BehaviorAnomalyScorer(POPULATION), SurpriseState()
    scorer.score_many(state, [("é", T0 + i, 6.0) for i in range(2)])
    assert state.run and SurpriseState.from_bytes(state.to_bytes()) == state
    with pytest.raises(ModelError):
        SurpriseState.from_bytes(state.to_bytes()[:-1])
    with pytest.raises(ModelError):
        BehaviorAnomalyConfig(z_cap=0.4, reference=0.5)
    assert PopulationSurprisal.from_metadata({"mean": 2.0, "std": 0.5}) == PopulationSurprisal(2.0, 0.5)
    assert PopulationSurprisal.from_metadata(None).std > 0


# -- crowds ----------------------------------------------------------------------------------------

WINDOW_MS = 15 * MINUTE_MS


def _clean_city(days: int, cells: int, rng: np.random.Generator) -> list[tuple[str, int, int, int]]:
    """(cell, window start, events, users) of quiet cells with a daily rhythm; sessions put several
    events of one user in a cell."""
    rows = []
    for w in range(days * 96):
        start = T0 + w * WINDOW_MS
        hour = (w // 4) % 24
        rate = 0.3 + 1.7 * (8 <= hour < 22)
        for c in range(cells):
            users = int(rng.poisson(rate * (1 + c % 3)))
            if users:
                events = int(sum(rng.geometric(0.3) for _ in range(users)))
                rows.append((f"cell-{c}", start, events, users))
    return rows


def _run(scorer: CrowdAnomalyScorer, rows: list[tuple[str, int, int, int]]) -> list:
    return score_windows(scorer, rows, WINDOW_MS)[0]


def test_a_clean_city_stays_quiet_and_a_gathering_alerts_for_its_cell() -> None:
    rows = _clean_city(days=3, cells=30, rng=np.random.default_rng(3))
    assert _run(CrowdAnomalyScorer(), rows) == []
    gathering_start = T0 + 2 * 86_400_000 + 18 * 3_600_000
    crowded = [(c, s, e + (60 if c == "cell-7" and gathering_start <= s < gathering_start + 7_200_000 else 0),
                u + (25 if c == "cell-7" and gathering_start <= s < gathering_start + 7_200_000 else 0))
               for c, s, e, u in rows]
    alerts = _run(CrowdAnomalyScorer(), crowded)
    assert alerts and {a.cell for a in alerts} == {"cell-7"}
    assert all(gathering_start <= a.window_start_ms < gathering_start + 7_200_000 for a in alerts)
    assert alerts[0].kind == "spike" and alerts[0].statistic == "users" and alerts[0].observed > 20
    assert len(alerts) <= 2                                     # rate-limited: at most one an hour


def test_a_busy_cell_that_empties_alerts_a_drop() -> None:
    rows = [("square", T0 + w * WINDOW_MS, 80 + (w % 3), 40) for w in range(300)]
    rows.append(("square", T0 + 300 * WINDOW_MS, 0, 0))
    alerts = _run(CrowdAnomalyScorer(), rows)
    assert [(a.kind, a.statistic) for a in alerts] == [("drop", "events")]


def test_week_slot_and_config_checks() -> None:
    assert week_slot(T0) == 5 and week_slot(T0 + 6 * 86_400_000 + 18 * 3_600_000) == 6 * 24 + 23
    assert week_slot(T0, utc_offset_hours=-5) == 0
    with pytest.raises(ModelError):
        CrowdAnomalyConfig(alpha=0.0)


def _cell_windows(events: list[dict], resolution: int = 8) -> list[tuple[str, int, int, int]]:
    """(cell, window start, events, distinct users) of 15-minute tumbling windows, in time order."""
    import h3

    counts: dict[tuple[int, str], list] = {}
    for event in events:
        if event["lat"] is None:
            continue
        key = (event["ts"] // WINDOW_MS * WINDOW_MS, h3.latlng_to_cell(event["lat"], event["lon"], resolution))
        entry = counts.setdefault(key, [0, set()])
        entry[0] += 1
        entry[1].add(event["user_id"])
    return [(cell, start, n, len(users)) for (start, cell), (n, users) in sorted(counts.items())]


def test_generated_city_clean_run_is_quiet_and_an_injected_gathering_is_flagged() -> None:
    import h3

    from simulation.users import BehaviorConfig, Gathering, generate_user_events, inject_gathering

    config = BehaviorConfig(n_users=300, n_events=30_000, seed=5)
    events = generate_user_events(config).events
    clean = _run(CrowdAnomalyScorer(), _cell_windows(events))
    days = (events[-1]["ts"] - events[0]["ts"]) / 86_400_000
    assert clean == [], f"{len(clean)} alerts on a clean run of {days:.1f} days"
    start = (events[0]["ts"] + int(0.7 * (events[-1]["ts"] - events[0]["ts"]))) // WINDOW_MS * WINDOW_MS
    place = (config.center_lat + 0.01, config.center_lon - 0.02)
    crowd = Gathering(lat=place[0], lon=place[1], start_ms=start, end_ms=start + 2 * 3_600_000, visitors=60)
    alerts = _run(CrowdAnomalyScorer(), _cell_windows(inject_gathering(events, crowd)))
    cell = h3.latlng_to_cell(*place, 8)
    assert alerts and {a.cell for a in alerts} == {cell}
    assert start <= alerts[0].window_start_ms < start + 30 * MINUTE_MS   # within the first half hour


# -- behavior anomalies over a trained model's predictions ------------------------------------------

@pytest.fixture(scope="module")
def taken_over():
    """A small generated city where 6 accounts are taken over late on the second day, and a model
    trained (before the takeovers) on its events; each user's surprisals from ``forward``."""
    import torch

    from models.next_action.features import EventRecord, FeatureSpec, Vocabulary, encode_events, encode_profiles
    from models.next_action.model import EventTensors, ProfileTensors
    from models.next_action.training import train_next_action
    from simulation.users import BehaviorConfig, Takeover, generate_user_events
    from stream_app.jobs.next_action import generate_actions

    torch.set_num_threads(1)
    clean = BehaviorConfig(n_users=150, n_events=24_000, seed=21)
    data = generate_actions(clean)
    model, metadata = train_next_action(data.dataset, epochs=8, progress=False, seed=0)
    events = generate_user_events(clean).events
    at = events[0]["ts"] + int(0.85 * (events[-1]["ts"] - events[0]["ts"]))
    victims = {f"user-{u:05d}" for u in range(0, 150, 25)}
    workload = generate_user_events(BehaviorConfig(n_users=150, n_events=24_000, seed=21, takeovers=tuple(
        Takeover(user=int(v[5:]), start_ms=at, seed=7) for v in sorted(victims))))
    vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
    users: dict[str, list[int]] = {}
    for row, event in enumerate(workload.events):
        users.setdefault(event["user_id"], []).append(row)
    streams = {}
    for user, rows in users.items():
        records = [EventRecord(workload.events[r]["action"], workload.events[r]["ts"]) for r in rows]
        with torch.no_grad():
            log_probs = model(EventTensors.collate([encode_events(records, vocab, spec)]),
                              profile=ProfileTensors.collate([encode_profiles(records, vocab, spec)]))[0].numpy()
        ids = [vocab.encode(r.token) for r in records]
        surprisal = [None] + [float(-log_probs[t - 1, ids[t]]) for t in range(1, len(records))]
        scored = [(r.token, r.ts_ms, s) for r, s in zip(records, surprisal, strict=True)]
        streams[user] = (scored, workload.intruder[rows])
    days = (workload.events[-1]["ts"] - workload.events[0]["ts"]) / 86_400_000
    return streams, PopulationSurprisal.from_metadata(metadata["surprisal"]), victims, days


def test_a_simulated_takeover_is_flagged_within_a_few_events_and_a_clean_run_stays_quiet(taken_over) -> None:
    streams, population, victims, days = taken_over
    scorer = BehaviorAnomalyScorer(population)
    delays, clean_alerts = {}, 0
    for user, (events, intruder) in streams.items():
        state = SurpriseState()
        for i, (token, ts, surprisal) in enumerate(events):
            alert = scorer.score(state, token, ts, surprisal) if surprisal is not None else None
            if alert is None:
                continue
            if intruder[i]:
                delays.setdefault(user, i - int(np.argmax(intruder)) + 1)
            else:
                clean_alerts += 1
    active = {u for u in victims if streams[u][1].sum() >= 8}         # victims with 8+ events after the takeover
    assert active and set(delays) >= active, (sorted(active - set(delays)), delays)
    taken = sorted(delays[u] for u in active)
    assert taken[len(taken) // 2] <= 6 and taken[-1] <= 10, delays   # within a few events
    rate = clean_alerts / (len(streams) * days)
    assert rate <= 0.005, f"{clean_alerts} alerts on clean behavior: {rate:.2%} of users per day"
    print(f"\ntakeovers flagged after {taken} events; clean alerts {clean_alerts} ({rate:.2%} of users per day)")


def test_cell_profiles_and_the_rhythm_survive_a_restart() -> None:
    rows = _clean_city(days=2, cells=5, rng=np.random.default_rng(9))
    first, profiles = CrowdAnomalyScorer(), {}
    for cell, start, events, users in rows[: len(rows) // 2]:
        first.observe(profiles.setdefault(cell, CellProfile()), cell, start, start + WINDOW_MS, events, users)
    restored = {cell: CellProfile.from_bytes(p.to_bytes()) for cell, p in profiles.items()}
    second = CrowdAnomalyScorer()
    second.load_rhythm(first.rhythm_state())
    for cell, start, events, users in rows[len(rows) // 2:]:
        a = first.observe(profiles[cell], cell, start, start + WINDOW_MS, events, users)
        b = second.observe(restored[cell], cell, start, start + WINDOW_MS, events, users)
        assert a == b
        np.testing.assert_allclose(first.expected(profiles[cell], 3), second.expected(restored[cell], 3), rtol=1e-6)
    with pytest.raises(ModelError):
        CellProfile.from_bytes(b"\x01" * 10)


def test_an_upper_tail_stopped_at_a_level_gives_the_same_decision_and_the_exact_value_below_it() -> None:
    for x, mu, dispersion in [(9, 2.0, 0.3), (40, 3.0, 0.1), (12, 11.5, 0.05), (400, 5.0, 0.8), (3, 0.5, 0.0)]:
        exact = _upper_tail(x, mu, dispersion)
        for level in (1e-6, 1e-3, 0.5):
            stopped = _upper_tail(x, mu, dispersion, stop_above=level)
            assert (stopped < level) == (exact < level)
            if exact < level:
                assert stopped == exact
