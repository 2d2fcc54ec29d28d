"""Serving: user-state bytes, window upkeep, GRU and Markov predictors, hot reload."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from models.exceptions import ModelError
from models.next_action import training
from models.next_action.anomaly import SurpriseState, SurprisingEvent
from models.next_action.datasets import ActionSequence, Split
from models.next_action.features import EventRecord, encode_events, encode_profiles
from models.next_action.history import ConsumedFilter, Profile
from models.next_action.model import EventTensors, NextActionConfig, ProfileTensors
from models.next_action.serving import (
    ActionEvent,
    GRUPredictor,
    MarkovPredictor,
    NextActionPredictor,
    UserState,
    WindowEvent,
    predict_in_rounds,
    update_window,
)
from models.next_action.training import load_next_action, save_next_action, train_next_action

HOUR_MS = 3_600_000
T0 = 1_333_411_200_000


def _same_state(a: UserState, b: UserState) -> bool:
    hidden_equal = (a.hidden is None and b.hidden is None) or (
        a.hidden is not None and b.hidden is not None and np.array_equal(a.hidden, b.hidden))
    profile_equal = (a.profile is None and b.profile is None) or (
        a.profile is not None and b.profile is not None and a.profile.size == b.profile.size
        and a.profile.filled() == b.profile.filled())
    filter_equal = (a.consumed is None and b.consumed is None) or (
        a.consumed is not None and b.consumed is not None and np.array_equal(a.consumed.bits, b.consumed.bits)
        and a.consumed.n_hashes == b.consumed.n_hashes)
    surprise_equal = (a.surprise is None) == (b.surprise is None) and (a.surprise is None or a.surprise == b.surprise)
    return hidden_equal and profile_equal and filter_equal and surprise_equal and \
        (a.window, a.last_ts_ms, a.last_lat, a.last_lon, a.event_count, a.model_version) == \
        (b.window, b.last_ts_ms, b.last_lat, b.last_lon, b.event_count, b.model_version)


def _profile(tokens: list[str], size: int = 4) -> Profile:
    profile = Profile(size)
    for token in tokens:
        profile.add(token, 0.9)
    return profile


def _filter(tokens: list[str]) -> ConsumedFilter:
    consumed = ConsumedFilter(100, 3)
    for token in tokens:
        consumed.add(token)
    return consumed


@pytest.mark.parametrize("state", [
    UserState(),
    UserState(hidden=np.arange(5, dtype=np.float32) / 3, window=[WindowEvent("café ☕", T0, 40.7, -74.0),
                                                                  WindowEvent("x", T0 + 5)],
              last_ts_ms=T0 + 5, last_lat=None, last_lon=None, event_count=2, model_version="gru-abc"),
    UserState(hidden=None, window=[WindowEvent("a" * 300, -5, -90.0, 180.0)], last_ts_ms=-5,
              last_lat=-90.0, last_lon=180.0, event_count=2**40, model_version="markov-online"),
    UserState(hidden=np.ones(3, np.float32), window=[WindowEvent("x", T0)], last_ts_ms=T0, event_count=9,
              model_version="baseline:user-frequency@gru-abc", profile=_profile(["a", "b", "a", "c", "d", "e", "ü"]),
              consumed=_filter(["a", "b"]),
              surprise=SurpriseState(n=4, mean=1.5, var=0.25, cusum=2.0, last_alert_ms=T0,
                                     run=[SurprisingEvent("a", T0, 0.01), SurprisingEvent("ß", T0 + 1, 0.5)])),
    UserState(profile=Profile(0), surprise=SurpriseState()),
], ids=["empty", "full", "edges", "long-term", "empty-long-term"])
def test_user_state_round_trip(state: UserState) -> None:
    data = state.to_bytes()
    assert data[:3] == b"NA\x02"
    back = UserState.from_bytes(data)
    assert _same_state(state, back)
    assert back.hidden is None or back.hidden.dtype == np.float32


def _format_1(state: UserState) -> bytes:
    """A state as the previous release wrote it (format 1: no profile, filter or surprise)."""
    hidden = b"" if state.hidden is None else state.hidden.astype("<f4").tobytes()
    version = state.model_version.encode()
    flags = (1 if state.hidden is not None else 0) | (2 if state.last_ts_ms is not None else 0)
    header = struct.pack("<2sBBqddQIIH", b"NA", 1, flags, state.last_ts_ms or 0, 0.0, 0.0, state.event_count,
                         len(hidden) // 4, len(state.window), len(version))
    tokens = [w.token.encode() for w in state.window]
    columns = [np.array([w.ts_ms for w in state.window], "<i8"), np.zeros(len(tokens), "u1"),
               np.zeros(len(tokens), "<f8"), np.zeros(len(tokens), "<f8"), np.array([len(t) for t in tokens], "<u2")]
    return b"".join([header, version, hidden] + [c.tobytes() for c in columns] + tokens)


def test_format_1_states_still_decode() -> None:
    old = UserState(hidden=np.arange(4, dtype=np.float32), window=[WindowEvent("p1", T0), WindowEvent("p2", T0 + 9)],
                    last_ts_ms=T0 + 9, event_count=7, model_version="gru-old")
    back = UserState.from_bytes(_format_1(old))
    assert _same_state(old, back) and back.profile is None and back.consumed is None
    with pytest.raises(ModelError):
        UserState.from_bytes(_format_1(old)[:-1])


def test_user_state_is_compact() -> None:
    state = UserState(hidden=np.zeros(128, dtype=np.float32), window=[WindowEvent("poi-1", T0)] * 100,
                      model_version="gru-0123456789ab")
    as_json = json.dumps({"hidden": state.hidden.tolist(), "window": [dataclasses.asdict(w) for w in state.window]})
    assert len(state.to_bytes()) <= 64 + 16 + 128 * 4 + 100 * (27 + len("poi-1")) < len(as_json)


@pytest.mark.parametrize("data", [
    b"", b"garbage", b"\x00" * 64, b"NA\x02" + b"\x00" * 60,
    UserState(window=[WindowEvent("abc", 1)]).to_bytes()[:-1],
    UserState(window=[WindowEvent("abc", 1)]).to_bytes() + b"!",
    UserState(hidden=np.ones(4, np.float32)).to_bytes()[:-3],
    UserState(window=[WindowEvent("abc", 1)]).to_bytes()[:-3] + b"\xff\xfe\xfd",
    UserState(profile=_profile(["a", "b"])).to_bytes()[:-1],
    UserState(surprise=SurpriseState(n=1)).to_bytes() + b"\x00",
], ids=["empty", "text", "zeros", "future-version", "truncated", "trailing", "short-hidden", "bad-utf8",
        "short-profile", "long-surprise"])
def test_user_state_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ModelError):
        UserState.from_bytes(data)


def test_future_version_message() -> None:
    data = bytearray(UserState().to_bytes())
    data[2] = 9
    with pytest.raises(ModelError, match="format 9"):
        UserState.from_bytes(bytes(data))


def test_update_window_trims_by_count_and_span() -> None:
    state = UserState()
    for i, hours in enumerate([0, 1, 2, 3, 30]):
        update_window(state, ActionEvent(f"t{i}", T0 + hours * HOUR_MS), window_size=3, window_span_s=24 * 3600)
    assert [w.token for w in state.window] == ["t4"]                   # span drops t1..t3
    update_window(state, ActionEvent("late", T0 + 29 * HOUR_MS, 1.0, 2.0), window_size=3,
                  window_span_s=24 * 3600)
    assert [w.token for w in state.window] == ["t4", "late"]
    assert state.last_ts_ms == T0 + 30 * HOUR_MS                      # a late event never moves it back
    assert (state.last_lat, state.last_lon, state.event_count) == (1.0, 2.0, 6)
    for i in range(3):
        update_window(state, ActionEvent(f"n{i}", T0 + 31 * HOUR_MS), window_size=3, window_span_s=24 * 3600)
    assert [w.token for w in state.window] == ["n0", "n1", "n2"]


# -- GRU predictor -------------------------------------------------------------------------------

def _toy_sequences() -> list[ActionSequence]:
    rng = np.random.default_rng(1)
    seqs = []
    for u in range(12):
        n = 8 + u % 5
        ts = T0 + np.cumsum(rng.integers(HOUR_MS, 20 * HOUR_MS, n))
        events = tuple(EventRecord(f"p{rng.integers(0, 9)}", int(t), 40.7 + 0.01 * (u % 3), -74.0) for t in ts)
        seqs.append(ActionSequence(f"u{u}", events, (Split.TRAIN,) * (n - 2) + (Split.VALID, Split.TEST)))
    return seqs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = NextActionConfig(vocab_size=1, embed_dim=8, hidden_dim=10, n_cell_buckets=16, cell_dim=3,
                              attn_dim=4, pair_dim=4, window_size=4, window_span_s=30 * 3600.0)
    model, metadata = train_next_action(_toy_sequences(), config, epochs=1, seed=0, progress=False)
    metadata["serve"] = "model"  # these tests check the model's path, whatever the toy validation says
    return save_next_action(tmp_path_factory.mktemp("ckpt") / "next.pt", model, metadata)


def test_gru_predictor_stream_equals_forward(checkpoint: Path) -> None:
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    loaded = load_next_action(checkpoint)
    assert isinstance(predictor, NextActionPredictor) and predictor.version.startswith("gru-")
    seqs = [s.events for s in _toy_sequences()[:3]]
    states = [UserState() for _ in seqs]
    for t in range(max(map(len, seqs))):
        users = [u for u, s in enumerate(seqs) if len(s) > t]
        round_states = [UserState.from_bytes(states[u].to_bytes()) for u in users]   # as from a table
        events = [ActionEvent(seqs[u][t].token, seqs[u][t].ts_ms, seqs[u][t].lat, seqs[u][t].lon) for u in users]
        top = predictor.predict(round_states, events, k=3)
        for u, state, ranked in zip(users, round_states, top, strict=False):
            states[u] = state
            with torch.no_grad():
                full = loaded.model(EventTensors.collate([encode_events(seqs[u][:t + 1], loaded.vocab, loaded.spec)]),
                                    profile=ProfileTensors.collate([encode_profiles(seqs[u][:t + 1], loaded.vocab,
                                                                                    loaded.spec)]))
            best = full[0, t].index_fill(0, torch.tensor([0, 1]), -float("inf")).topk(3)
            assert [tok for tok, _ in ranked] == [loaded.vocab.decode(int(i)) for i in best.indices]
            np.testing.assert_allclose([p for _, p in ranked], best.values.exp().numpy(), atol=1e-5)
    assert states[0].event_count == len(seqs[0]) and states[0].model_version == predictor.version
    assert states[0].hidden.shape == (10,) and len(states[0].window) <= 4
    assert states[0].last_ts_ms == seqs[0][-1].ts_ms


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "some-out-of-order"])
def test_predict_many_equals_round_by_round(checkpoint: Path, shuffle: bool) -> None:
    """Batches of several events per user give the same predictions and states as one ``predict``
    per round, whether the fast path (times in order) or the fallback (out of order) serves them."""
    rng = np.random.default_rng(5)
    seqs = [list(s.events) for s in _toy_sequences()]
    if shuffle:
        for s in seqs[::3]:
            i = int(rng.integers(1, len(s) - 1))
            s[i], s[i + 1] = s[i + 1], s[i]
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    fast, slow = [UserState() for _ in seqs], [UserState() for _ in seqs]
    position = [0] * len(seqs)
    while any(p < len(s) for p, s in zip(position, seqs, strict=False)):
        chunks = []
        for u, s in enumerate(seqs):
            n = int(rng.integers(0, 4))
            chunks.append([ActionEvent(e.token, e.ts_ms, e.lat, e.lon) for e in s[position[u]:position[u] + n]])
            position[u] += len(chunks[-1])
        fast = [UserState.from_bytes(state.to_bytes()) for state in fast]           # as from a table
        got = predictor.predict_many(fast, chunks, k=3)
        want = predict_in_rounds(predictor, slow, chunks, k=3)
        for g, w in zip(got, want, strict=False):
            assert [[t for t, _ in r.top] for r in g] == [[t for t, _ in r.top] for r in w]
            np.testing.assert_allclose([p for r in g for _, p in r.top], [p for r in w for _, p in r.top], atol=1e-5)
            assert [(r.window_events, r.window_span_s) for r in g] == [(r.window_events, r.window_span_s) for r in w]
        for a, b in zip(fast, slow, strict=False):
            assert (a.window, a.last_ts_ms, a.event_count) == (b.window, b.last_ts_ms, b.event_count)
            assert (a.hidden is None) == (b.hidden is None)
            if a.hidden is not None:
                np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)


def test_state_bytes_are_the_same_with_or_without_the_model_cache(checkpoint: Path) -> None:
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    states = [UserState() for _ in range(3)]
    events = [[ActionEvent("p1", T0, 40.7, -74.0), ActionEvent("p2", T0 + HOUR_MS)],
              [ActionEvent("ü-ß", T0 + 5, None, None)], [ActionEvent("p3", T0, 0.0, 0.0)]]
    predictor.predict_many(states, events, k=2)
    for state in states:
        assert state._encoded is not None and len(state._encoded) == len(state.window)
        cached = state.to_bytes()
        state._encoded = None
        assert state.to_bytes() == cached


def test_predict_many_checks_its_arguments(checkpoint: Path) -> None:
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    assert predictor.predict_many([UserState()], [[]], k=2) == [[]]
    with pytest.raises(ModelError, match="one event list per state"):
        predictor.predict_many([UserState()], [], k=2)
    with pytest.raises(ModelError, match="k must be"):
        predictor.predict_many([UserState()], [[ActionEvent("p1", T0)]], k=0)


def test_gru_predictor_hot_reload_replays_window(checkpoint: Path) -> None:
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    loaded = load_next_action(checkpoint)
    seq = _toy_sequences()[0].events
    window = [WindowEvent(e.token, e.ts_ms, e.lat, e.lon) for e in seq[2:5]]
    stale = UserState(hidden=np.full(10, 9.0, np.float32), window=list(window), last_ts_ms=seq[4].ts_ms,
                      last_lat=seq[4].lat, last_lon=seq[4].lon, event_count=5, model_version="gru-older")
    fresh = UserState(hidden=None, window=list(window), last_ts_ms=seq[4].ts_ms, last_lat=seq[4].lat,
                      last_lon=seq[4].lon, event_count=5, model_version="gru-older")
    predictor._replay_stale([fresh])
    with torch.no_grad():
        replayed = loaded.model.hidden_states(EventTensors.collate(
            [encode_events(seq[2:5], loaded.vocab, loaded.spec)]))[0, -1].numpy()
    np.testing.assert_allclose(fresh.hidden, replayed, atol=1e-6)
    event = ActionEvent(seq[5].token, seq[5].ts_ms, seq[5].lat, seq[5].lon)
    assert predictor.predict([stale], [event], k=2) == predictor.predict(
        [UserState(hidden=replayed.copy(), window=list(window), last_ts_ms=seq[4].ts_ms, last_lat=seq[4].lat,
                   last_lon=seq[4].lon, event_count=5, model_version=predictor.version)], [event], k=2)


def test_gru_predictor_late_event_and_checks(checkpoint: Path) -> None:
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    state = UserState()
    predictor.predict([state], [ActionEvent("p1", T0 + 10 * HOUR_MS)], k=2)
    top = predictor.predict([state], [ActionEvent("never-seen", T0)], k=50)
    assert state.last_ts_ms == T0 + 10 * HOUR_MS and state.event_count == 2
    assert len(top[0]) == predictor.metadata["config"]["vocab_size"] - 2
    assert all(tok not in ("<pad>", "<oov>") for tok, _ in top[0])
    assert predictor.predict([], [], k=3) == []
    with pytest.raises(ModelError):
        predictor.predict([UserState()], [], k=1)
    with pytest.raises(ModelError):
        predictor.predict([UserState()], [ActionEvent("p1", T0)], k=0)
    with pytest.raises(ModelError):
        predictor.predict([UserState(hidden=np.zeros(3, np.float32), model_version=predictor.version)],
                          [ActionEvent("p1", T0)], k=1)


# -- Markov predictor ----------------------------------------------------------------------------

# (the fallback's own tests: tests/models/next_action/test_fallback.py)


def test_switching_between_predictors(checkpoint: Path) -> None:
    gru, markov = GRUPredictor.from_checkpoint(checkpoint), MarkovPredictor(window_size=4)
    state = UserState()
    gru.predict([state], [ActionEvent("p1", T0)], k=1)
    markov.predict([state], [ActionEvent("p2", T0 + 1)], k=1)
    assert state.hidden is None and state.model_version == MarkovPredictor.version
    gru.predict([state], [ActionEvent("p3", T0 + 2)], k=1)
    assert state.model_version == gru.version and state.hidden is not None and len(state.window) == 3


# -- serving a baseline that beat the model -------------------------------------------------------

def _cycle_sequences() -> list[ActionSequence]:
    """Every user walks a -> b -> c -> a ...: first-order Markov is perfect."""
    seqs = []
    for u in range(10):
        tokens = ["a", "b", "c"] * 8
        events = tuple(EventRecord(t, T0 + (u * 100 + i) * HOUR_MS) for i, t in enumerate(tokens[u % 3:u % 3 + 20]))
        seqs.append(ActionSequence(f"u{u}", events, (Split.TRAIN,) * 14 + (Split.VALID,) * 3 + (Split.TEST,) * 3))
    return seqs


def test_a_checkpoint_that_loses_to_a_baseline_serves_the_baseline(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # No blend: blended with Markov's mix, even this crippled model would beat Markov.
    monkeypatch.setattr(training, "BLEND_MARGIN_SE", float("inf"))
    config = NextActionConfig(vocab_size=1, embed_dim=8, hidden_dim=8, n_cell_buckets=16, cell_dim=2, attn_dim=4,
                              pair_dim=4, window_size=1, use_transitions=False, use_profile=False, use_location=False)
    model, metadata = train_next_action(_cycle_sequences(), config, epochs=1, lr=1e-6, seed=0, progress=False)
    assert metadata["serve"] == "markov"
    assert metadata["baselines"]["markov"]["mrr"] == 1.0 > metadata["validation"]["mrr"]
    path = save_next_action(tmp_path / "loser.pt", model, metadata)
    predictor = GRUPredictor.from_checkpoint(path, surprisal=True)
    assert predictor.version == f"baseline:markov@{metadata['version']}"
    state = UserState()
    results = predictor.predict_many([state], [[ActionEvent("a", T0), ActionEvent("b", T0 + 1),
                                                ActionEvent("c", T0 + 2)]], k=2)[0]
    assert [r.top[0][0] for r in results] == ["b", "c", "a"]
    popularity = model.popularity.numpy().astype(float) + 1.0
    popularity[0] = 0.0                                              # the 1 % smoothing of baseline probabilities
    p_b = 0.99 + 0.01 * popularity[metadata["vocabulary"].index("b") + 2] / popularity.sum()
    p_c = 0.99 + 0.01 * popularity[metadata["vocabulary"].index("c") + 2] / popularity.sum()
    assert results[0].surprisal is None                              # nothing was predicted before it
    assert results[2].surprisal == pytest.approx(-np.log(p_c), abs=1e-9)
    assert state.model_version == predictor.version and state.profile is not None
    again = UserState.from_bytes(state.to_bytes())
    assert predictor.predict([again], [ActionEvent("a", T0 + 3)], k=1) == [[("b", pytest.approx(p_b))]]


@pytest.mark.parametrize("serve", ["popularity", "markov", "user-frequency", "mix"])
def test_a_served_baseline_equals_its_validation_scorer(checkpoint: Path, tmp_path: Path, serve: str) -> None:
    """What a worker serves for a baseline is what training scored it on: same scores from the
    state (the profile is the user-frequency counts; Markov reads the checkpoint's table)."""
    from models.next_action.baselines import TargetContext, servable_baselines
    from models.next_action.evaluation import baseline_probabilities, training_counts

    loaded = load_next_action(checkpoint)
    loaded.metadata["serve"] = serve
    path = save_next_action(tmp_path / f"{serve}.pt", loaded.model, loaded.metadata)
    predictor = GRUPredictor.from_checkpoint(path)
    counts = training_counts(_toy_sequences(), loaded.vocab)
    scorer = servable_baselines(counts)[serve]
    events = list(_toy_sequences()[1].events)
    state, profiles = UserState(), encode_profiles(events, loaded.vocab, loaded.spec)
    for t, event in enumerate(events):
        top = predictor.predict([state], [event], k=3)[0]
        context = TargetContext([loaded.vocab.encode_many(e.token for e in events[:t + 1])],
                                profiles.ids[t:t + 1].astype(np.int64), profiles.probs[t:t + 1])
        scores = scorer.scores(context)[0]
        probs = baseline_probabilities(scores[None], counts.popularity)[0]
        scores[:2] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -counts.popularity, -scores))[:3]
        assert [tok for tok, _ in top] == [loaded.vocab.decode(int(i)) for i in order]
        np.testing.assert_allclose([p for _, p in top], probs[order], atol=1e-9)
        state = UserState.from_bytes(state.to_bytes())


def test_surprisal_is_minus_log_p_of_the_prediction_before_each_event(checkpoint: Path) -> None:
    """Across calls and chunks (the first event of a call is scored against the stored state's
    prediction), each event's surprisal equals -log p from ``forward`` one position earlier."""
    predictor = GRUPredictor.from_checkpoint(checkpoint, surprisal=True)
    loaded = load_next_action(checkpoint)
    rng = np.random.default_rng(8)
    seqs = [list(s.events) for s in _toy_sequences()[:4]]
    states, got = [UserState() for _ in seqs], [[] for _ in seqs]
    position = [0] * len(seqs)
    while any(p < len(s) for p, s in zip(position, seqs, strict=False)):
        chunks = []
        for u, s in enumerate(seqs):
            chunks.append(s[position[u]:position[u] + int(rng.integers(0, 4))])
            position[u] += len(chunks[-1])
        states = [UserState.from_bytes(state.to_bytes()) for state in states]
        for u, results in enumerate(predictor.predict_many(states, chunks, k=2)):
            got[u] += [r.surprisal for r in results]
    for u, seq in enumerate(seqs):
        with torch.no_grad():
            profile = ProfileTensors.collate([encode_profiles(seq, loaded.vocab, loaded.spec)])
            log_probs = loaded.model(EventTensors.collate([encode_events(seq, loaded.vocab, loaded.spec)]),
                                     profile=profile)[0]
        ids = [loaded.vocab.encode(e.token) for e in seq]
        want = [None] + [-float(log_probs[t - 1, ids[t]]) if ids[t] > 1 else None for t in range(1, len(seq))]
        assert [g is None for g in got[u]] == [w is None for w in want]
        np.testing.assert_allclose([g for g in got[u] if g is not None], [w for w in want if w is not None], atol=1e-5)
    plain = GRUPredictor.from_checkpoint(checkpoint)
    assert all(r.surprisal is None for r in plain.predict_many([UserState()], [seqs[0][:3]], k=1)[0])


# -- the batched path pinned to one event at a time -------------------------------------------------

def _handmade_predictor(exclude: bool) -> GRUPredictor:
    """A model with every input the batched path prepares: cells, location, profile (fewer slots
    than tokens, so slots get replaced) and, with ``exclude``, the consumed-action filter."""
    from models.next_action.features import FeatureSpec, Vocabulary, consumed_index
    from models.next_action.model import NextActionModel
    from models.next_action.training import LoadedNextAction

    vocab = Vocabulary([f"p{i}" for i in range(9)])
    spec = FeatureSpec(lat_mean=40.7, lat_std=0.1, lon_mean=-74.0, lon_std=0.1, n_cell_buckets=16,
                       profile_size=4, profile_half_life=5.0,
                       consumed_bits=64 if exclude else 0, consumed_hashes=2 if exclude else 0)
    torch.manual_seed(3)
    model = NextActionModel(NextActionConfig(vocab_size=len(vocab), embed_dim=6, hidden_dim=8, n_cell_buckets=16,
                                             cell_dim=3, attn_dim=4, pair_dim=4, window_size=5,
                                             window_span_s=20 * 3600.0, exclude_consumed=exclude, dropout=0.0))
    model.set_transitions([vocab.encode_many(f"p{i % 9}" for i in range(s, s + 30)) for s in range(4)])
    model.set_consumed_index(consumed_index(vocab, spec), spec.consumed_bits)
    with torch.no_grad():
        model.repeat_bias.fill_(0.5)
    loaded = LoadedNextAction(model.eval(), vocab, spec, {"version": "handmade-1", "serve": "model"})
    return GRUPredictor(loaded, surprisal=True)


@pytest.mark.parametrize("exclude", [False, True], ids=["repeats", "exclude-consumed"])
def test_predict_many_equals_one_event_at_a_time_in_every_output(exclude: bool) -> None:
    """One ``predict_many`` call per batch (many users, several events each, all the per-event
    work done over the whole batch) gives what one ``predict_events`` call per event gives: the
    top-k, its probabilities, the window, the surprisal, and the same state bytes (the hidden
    state to float rounding), also after states come back from bytes."""
    rng = np.random.default_rng(11)
    users = 7
    streams = []
    for _ in range(users):
        ts = T0 + np.cumsum(rng.integers(0, 9 * HOUR_MS, 40))  # gaps past the span and equal times
        streams.append([ActionEvent(f"p{rng.integers(0, 12)}", int(t),  # p9..p11: outside the vocabulary
                                    *((40.7 + 0.01 * rng.normal(), -74.0) if rng.random() < 0.7 else (None, None)))
                        for t in ts])
    batched, single = _handmade_predictor(exclude), _handmade_predictor(exclude)
    fast, slow = [UserState() for _ in streams], [UserState() for _ in streams]
    position = [0] * users
    call = scored = 0
    while any(p < len(s) for p, s in zip(position, streams, strict=True)):
        chunks = []
        for u, stream in enumerate(streams):
            chunks.append(stream[position[u]:position[u] + int(rng.integers(0, 6))])
            position[u] += len(chunks[-1])
        if call % 3 == 2:  # both as from a table (the fast path rebuilds its caches)
            fast, slow = ([UserState.from_bytes(s.to_bytes()) for s in states] for states in (fast, slow))
        got = batched.predict_many(fast, chunks, k=3)
        want = [[single.predict_events([slow[u]], [event], k=3)[0] for event in chunk]
                for u, chunk in enumerate(chunks)]
        call += 1
        for g, w in zip(got, want, strict=True):
            assert [[t for t, _ in r.top] for r in g] == [[t for t, _ in r.top] for r in w]
            np.testing.assert_allclose([p for r in g for _, p in r.top], [p for r in w for _, p in r.top], atol=1e-5)
            assert [(r.window_events, r.window_span_s) for r in g] == [(r.window_events, r.window_span_s) for r in w]
            assert [r.surprisal is None for r in g] == [r.surprisal is None for r in w]
            np.testing.assert_allclose([r.surprisal for r in g if r.surprisal is not None],
                                       [r.surprisal for r in w if r.surprisal is not None], atol=1e-4)
            scored += sum(r.surprisal is not None for r in g)
        for a, b in zip(fast, slow, strict=True):
            if b.event_count:  # (predict_many gives even a user without events an empty profile)
                np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-5)
                assert dataclasses.replace(a, hidden=b.hidden).to_bytes() == b.to_bytes()
    assert sum(s.event_count for s in fast) == sum(map(len, streams)) and scored > 100


def test_predict_many_with_event_times_far_apart_equals_round_by_round(checkpoint: Path) -> None:
    """Users whose times are so far apart that the one search over the whole batch would overflow
    int64 keys: the window trim falls back to one search per user, with the same result."""
    predictor = GRUPredictor.from_checkpoint(checkpoint)
    chunks = [[ActionEvent(f"p{i % 3}", T0 + i * HOUR_MS) for i in range(6)],
              [ActionEvent(f"p{i % 2}", T0 + i * 20 * HOUR_MS) for i in range(6)],
              [ActionEvent(f"p{i % 4}", 4 * 10**18 + i * 20 * HOUR_MS) for i in range(6)]]
    fast, slow = [UserState() for _ in chunks], [UserState() for _ in chunks]
    got = predictor.predict_many(fast, chunks, k=2)
    want = predict_in_rounds(predictor, slow, chunks, k=2)
    for g, w in zip(got, want, strict=True):
        assert [[t for t, _ in r.top] for r in g] == [[t for t, _ in r.top] for r in w]
        assert [(r.window_events, r.window_span_s) for r in g] == [(r.window_events, r.window_span_s) for r in w]
    assert [a.window for a in fast] == [b.window for b in slow] and len(fast[1].window) < 6  # (the span trims)
