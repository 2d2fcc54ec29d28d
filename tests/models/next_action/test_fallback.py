"""The no-checkpoint fallback: per-user Markov from the user's state alone, replay-safe, with surprisal."""

from __future__ import annotations

import math

import pytest

from models.exceptions import ModelError
from models.next_action.anomaly import BehaviorAnomalyScorer, PopulationSurprisal, SurpriseState
from models.next_action.fallback import MarkovPredictor, user_markov
from models.next_action.history import Profile
from models.next_action.serving import ActionEvent, EventPrediction, NextActionPredictor, UserState
from models.next_action.serving import MarkovPredictor as ReExported
from simulation.users import BehaviorConfig, generate_user_events

T0 = 1_333_411_200_000
MINUTE_MS = 60_000


def _events(tokens: str, start: int = 0) -> list[ActionEvent]:
    return [ActionEvent(t, T0 + (start + i) * MINUTE_MS) for i, t in enumerate(tokens)]


def test_predictions_come_from_the_users_own_transitions_and_counts() -> None:
    predictor = MarkovPredictor(window_size=10, window_span_s=86_400)
    assert isinstance(predictor, NextActionPredictor) and ReExported is MarkovPredictor
    state = UserState()
    first = predictor.predict([state], _events("a"), k=3)
    assert first == [[("a", 1 / 2)]]  # one action seen; half the mass left for a new one
    predictor.predict_many([state], [_events("bab", start=1)], k=3)  # a b a b: a->b twice, b->a once
    # after b: the one successor a (n=1, d=1) mixed half and half with the counts (a 2, b 2 of 4 + 2 kinds)
    markov = user_markov(state)
    assert markov is not None
    assert markov.probs == pytest.approx({"a": (1 + 2 / 6) / 2, "b": (0 + 2 / 6) / 2})
    assert markov.p_new == pytest.approx((2 / 6) / 2)
    assert sum(markov.probs.values()) + markov.p_new == pytest.approx(1.0)
    assert markov.top(1) == [("a", pytest.approx(2 / 3))]
    assert state.model_version == "markov-user" and state.hidden is None and state.event_count == 4


def test_users_share_nothing() -> None:
    predictor = MarkovPredictor()
    alice, bob = UserState(), UserState()
    predictor.predict_many([alice], [_events("abcabc")], k=2)
    alone = user_markov(alice)
    predictor.predict_many([bob], [_events("xyzxyzxyz")], k=2)
    assert user_markov(alice) == alone
    together = predictor.predict_many([UserState(), UserState()], [_events("abcabc"), _events("xyzxyzxyz")], k=2)
    assert [p.top for p in together[0]] == [p.top for p in MarkovPredictor().predict_many(
        [UserState()], [_events("abcabc")], k=2)[0]]


def test_surprisal_is_minus_log_p_of_the_observed_action_under_the_prediction_before_it() -> None:
    predictor = MarkovPredictor(window_size=20)
    state = UserState()
    checked = new = 0
    for i, event in enumerate(_events("abcabcabdabcxqab")):
        before = user_markov(state)
        prediction = predictor.predict_events([state], [event], k=50)[0]
        if i == 0:
            assert before is None and prediction.surprisal is None  # nothing predicted before a first event
            continue
        assert before is not None
        assert prediction.surprisal is not None
        assert prediction.surprisal == pytest.approx(-math.log(before.probability(event.token)))
        if event.token in before.probs:
            assert dict(before.top(50))[event.token] == pytest.approx(math.exp(-prediction.surprisal))
            checked += 1
        else:
            assert prediction.surprisal == pytest.approx(-math.log(before.p_new))  # "x", "q": new to the user
            new += 1
    assert checked == 10 and new == 5  # b, c, d, x and q were new to the user


def test_surprisal_can_be_switched_off() -> None:
    predictions = MarkovPredictor(surprisal=False).predict_many([UserState()], [_events("abab")], k=1)[0]
    assert [p.surprisal for p in predictions] == [None] * 4 and predictions[-1].top == [("a", pytest.approx(2 / 3))]


def _generated(users: int = 12, events: int = 1_500) -> list[list[ActionEvent]]:
    workload = generate_user_events(BehaviorConfig(n_users=users, n_events=events, seed=5))
    by_user: dict[str, list[ActionEvent]] = {}
    for e in workload.events:
        by_user.setdefault(e["user_id"], []).append(ActionEvent(e["action"], e["ts"], e["lat"], e["lon"]))
    return list(by_user.values())


def test_events_replayed_from_a_restored_state_get_the_same_predictions() -> None:
    """A crash: the state as last written to the changelog, then the events after it again, in a
    new process (a new predictor that served other users meanwhile) and in other batches."""
    streams = _generated()
    live, states = MarkovPredictor(window_size=30), [UserState() for _ in streams]
    cut = [len(s) // 2 for s in streams]
    live.predict_many(states, [s[:c] for s, c in zip(streams, cut, strict=True)], k=5)
    written = [state.to_bytes() for state in states]
    first = live.predict_many(states, [s[c:] for s, c in zip(streams, cut, strict=True)], k=5)

    restarted = MarkovPredictor(window_size=30)
    restarted.predict_many([UserState()], [_events("zzzyzy")], k=5)  # other traffic before the replay
    restored = [UserState.from_bytes(raw) for raw in written]
    again: list[list[EventPrediction]] = [[] for _ in streams]
    for r in range(max(len(s) - c for s, c in zip(streams, cut, strict=True))):  # one event per user and call
        rows = [i for i, (s, c) in enumerate(zip(streams, cut, strict=True)) if c + r < len(s)]
        for i, p in zip(rows, restarted.predict_events([restored[i] for i in rows],
                                                       [streams[i][cut[i] + r] for i in rows], k=5), strict=True):
            again[i].append(p)
    assert sum(map(len, first)) > 500
    assert [[p.top for p in u] for u in again] == [[p.top for p in u] for u in first]  # the same floats too
    assert [[p.surprisal for p in u] for u in again] == [[p.surprisal for p in u] for u in first]
    assert [s.to_bytes() for s in restored] == [s.to_bytes() for s in states]


def test_a_state_left_by_a_checkpoint_replays_the_same_after_a_restore() -> None:
    """A decayed profile (scale != 1) of another size, as a checkpoint leaves it, is rebuilt as counts."""
    profile = Profile(8)
    for token in "abcabcab":
        profile.add(token, 0.9)
    state = UserState(window=[ActionEvent(t, T0 + i) for i, t in enumerate("abcabcab")], last_ts_ms=T0 + 7,
                      event_count=8, model_version="gru-x", profile=profile)
    restored = UserState.from_bytes(state.to_bytes())
    events = _events("cabcx", start=10)
    live = MarkovPredictor().predict_many([state], [events], k=3)[0]
    replayed = MarkovPredictor().predict_many([restored], [events], k=3)[0]
    assert [(p.top, p.surprisal) for p in live] == [(p.top, p.surprisal) for p in replayed]
    assert state.profile is not None and state.profile.size == 64 and state.profile.scale == 1.0


def test_a_takeover_by_someone_who_does_other_things_raises_an_alert_within_a_few_events() -> None:
    predictor, scorer = MarkovPredictor(window_size=50), BehaviorAnomalyScorer(PopulationSurprisal.from_metadata(None))
    state, surprise = UserState(), SurpriseState()
    habits = _events("abcabdabcabdabcabcabdacb" * 5)
    intruder = _events("xyzwvuxyzwvu", start=len(habits))
    alerts = [scorer.score_many(surprise, [(e.token, e.ts_ms, p.surprisal)]) for e, p in
              zip(habits + intruder, predictor.predict_many([state], [habits + intruder], k=3)[0], strict=True)]
    raised = [i - len(habits) for i, a in enumerate(alerts) if a]
    # none on the habits; the intruder's 7th event (the CUSUM needs 4 at least)
    assert raised and 0 <= raised[0] < 8, raised
    assert all(e.token in "xyzwvu" for e in alerts[len(habits) + raised[0]][0].events)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ModelError, match="one transition"):
        MarkovPredictor(window_size=1)
    with pytest.raises(ModelError, match="one event per state"):
        MarkovPredictor().predict([UserState()], [], k=1)
    with pytest.raises(ModelError, match="k must be"):
        MarkovPredictor().predict_many([UserState()], [_events("a")], k=0)
