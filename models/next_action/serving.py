"""What the streaming glue calls: per-user state, next-action predictors, and their predictions."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from models.exceptions import ModelError
from models.next_action.baselines import TargetContext, TrainingCounts, servable_baselines
from models.next_action.evaluation import baseline_probabilities
from models.next_action.features import OOV_ID, PAD_ID, EncodedEvents, encode_events, encode_next_events
from models.next_action.history import ConsumedFilter, Profile, ProfileSnapshots, profile_snapshots
from models.next_action.model import EventTensors, ProfileTensors
from models.next_action.state import STATE_FORMAT_VERSION, ActionEvent, UserState, WindowEvent
from models.next_action.training import LoadedNextAction, load_next_action

if TYPE_CHECKING:  # the fallback lives in models.next_action.fallback, which imports this module
    from models.next_action.fallback import MarkovPredictor

__all__ = ["STATE_FORMAT_VERSION", "WindowEvent", "ActionEvent", "UserState", "NextActionPredictor",
           "EventPrediction", "update_window", "predict_in_rounds", "GRUPredictor", "MarkovPredictor"]

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``MarkovPredictor`` is still importable from here (imported on first use: no import cycle)."""
    if name == "MarkovPredictor":
        from models.next_action.fallback import MarkovPredictor
        return MarkovPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class EventPrediction:
    """What one event yields: the top-k (token, probability) of the user's next action, the window
    the model saw (its events and their span in seconds, the event included), and the event's
    surprisal: -log of the probability the prediction before it gave it (None when there was no
    prediction before it, for an action outside the vocabulary, or when the predictor was built
    without ``surprisal``)."""

    top: list[tuple[str, float]]
    window_events: int
    window_span_s: float
    surprisal: float | None = None


@runtime_checkable
class NextActionPredictor(Protocol):
    """One round of predictions: states[i] (distinct users) receive events[i]; every state is
    updated in place and the top-k (token, probability) of each user's NEXT action returned."""

    version: str
    window_size: int
    window_span_s: float

    def predict(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[list[tuple[str, float]]]:
        ...

    def predict_many(self, states: list[UserState], sequences: list[list[ActionEvent]],
                     k: int) -> list[list[EventPrediction]]:
        """Several events per user: ``sequences[i]`` (in order) are applied to ``states[i]``; the
        result holds one prediction per event, as if ``predict`` ran once per round (round r
        holding every user's r-th event)."""
        ...


def predict_in_rounds(predictor: NextActionPredictor, states: list[UserState],
                      sequences: list[list[ActionEvent]], k: int) -> list[list[EventPrediction]]:
    """``predict_many`` as one ``predict`` call per round (round r holds each user's r-th event)."""
    _check_sequences(states, sequences, k)
    results: list[list[EventPrediction]] = [[] for _ in states]
    for r in range(max(map(len, sequences), default=0)):
        rows = [i for i, events in enumerate(sequences) if len(events) > r]
        batch = [states[i] for i in rows]
        single = getattr(predictor, "predict_events", None)
        if single is not None:
            for i, prediction in zip(rows, single(batch, [sequences[i][r] for i in rows], k), strict=False):
                results[i].append(prediction)
            continue
        top = predictor.predict(batch, [sequences[i][r] for i in rows], k)
        for i, ranked in zip(rows, top, strict=False):
            window = states[i].window
            span_s = (window[-1].ts_ms - window[0].ts_ms) / 1000 if window else 0.0
            results[i].append(EventPrediction(ranked, len(window), span_s))
    return results


def update_window(state: UserState, event: ActionEvent, *, window_size: int, window_span_s: float,
                  encoded: EncodedEvents | None = None) -> None:
    """Append ``event`` to the window, keep the last ``window_size`` events whose time is within
    ``window_span_s`` of the event's, and record it as the user's latest event (a late event
    never moves ``last_ts_ms`` back). ``encoded`` (one row) keeps the encoding cache in step."""
    cache = state._encoded
    cache = _concat(cache, encoded) if encoded is not None and cache is not None and \
        len(cache) == len(state.window) else None
    window = state.window + [event]
    start = max(0, len(window) - window_size)
    ts = cache.ts_ms[start:] if cache is not None else np.fromiter((w.ts_ms for w in window[start:]), np.int64)
    inside = ts > event.ts_ms - int(round(window_span_s * 1000.0))
    if inside.all():
        state.window, state._encoded = window[start:], cache and _select(cache, slice(start, None))
    else:
        keep = start + np.flatnonzero(inside)
        state.window, state._encoded = [window[i] for i in keep], cache and _select(cache, keep)
    state.last_ts_ms = event.ts_ms if state.last_ts_ms is None else max(state.last_ts_ms, event.ts_ms)
    state.last_lat, state.last_lon = event.lat, event.lon
    state.event_count += 1


def _concat(a: EncodedEvents, b: EncodedEvents) -> EncodedEvents:
    return EncodedEvents(*(np.concatenate([x, y]) for x, y in zip(_columns(a), _columns(b), strict=False)))


def _select(a: EncodedEvents, index: np.ndarray | slice) -> EncodedEvents:
    return EncodedEvents(*(x[index] for x in _columns(a)))


def _columns(a: EncodedEvents) -> tuple[np.ndarray, ...]:
    return a.tokens, a.cells, a.ts_ms, a.lat, a.lon, a.dense, a.consumed


@dataclass
class _History:
    """One call's long-term inputs per user: the profile before the new events (one snapshot),
    after each new event, and the consumed filter's bits before and after each new event."""

    before: list[ProfileSnapshots]
    after: list[ProfileSnapshots]
    filter_before: list[np.ndarray] | None
    filter_after: list[np.ndarray] | None


class GRUPredictor:
    """A next-action checkpoint behind the predictor protocol: ``predict`` and ``predict_many`` run
    one ``NextActionModel.steps`` call over every user's new events (users whose events go back in
    time run round by round).

    Each state carries the user's long-term profile and (for models that never repeat an action)
    the consumed filter, kept up to date event by event. When the checkpoint says a baseline beat
    the model on validation (``LoadedNextAction.serves``), the predictions come from that baseline,
    computed from the same state (the profile is the user-frequency counts, Markov reads the
    checkpoint's transition table), and ``version`` says so: ``baseline:<name>@<checkpoint version>``.

    Hot reload: a state last advanced by another model (its ``model_version`` differs) gets its
    hidden state rebuilt by replaying its stored window through this model, from a zero state (so
    it forgets what lay before the window); its profile is kept (token strings survive a model
    change) and resized, its filter kept when the sizes agree, else rebuilt from the window. A state
    from before profiles existed gets them from its window. An event older than the user's last one
    gets a time gap of 0; deciding lateness is the caller's job.

    ``surprisal=True`` fills ``EventPrediction.surprisal`` (for behavior anomaly scoring); it costs
    one more output per user and call (the prediction before the call's first event).
    """

    def __init__(self, loaded: LoadedNextAction, *, device: torch.device | str = "cpu",
                 surprisal: bool = False) -> None:
        self._model = loaded.model.to(device).eval()
        self._vocab, self._spec, self._device = loaded.vocab, loaded.spec, torch.device(device)
        self._tokens = [loaded.vocab.decode(i) for i in range(len(loaded.vocab))]
        self._no_events = encode_events([], self._vocab, self._spec)
        self._surprisal = surprisal
        self.metadata = loaded.metadata
        self.serves = loaded.serves
        self.checkpoint_version = loaded.version
        self.version = loaded.version if self.serves == "model" else f"baseline:{self.serves}@{loaded.version}"
        self.window_size = loaded.model.config.window_size
        self.window_span_s = loaded.model.config.window_span_s
        self._span_ms = int(round(self.window_span_s * 1000.0))
        self._decay = self._spec.profile_decay
        self._excludes = bool(loaded.model.config.exclude_consumed and self._spec.consumed_hashes
                              and loaded.model.consumed_index.shape[1])
        self._popularity = loaded.model.popularity.detach().cpu().numpy().astype(np.float64)
        self._baseline = None
        if self.serves != "model":
            counts = _counts_of(loaded)
            self._baseline = servable_baselines(counts, exclude_consumed=loaded.model.config.exclude_consumed)[
                self.serves]
        self._consumed_index = loaded.model.consumed_index.cpu().numpy()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu", *,
                        surprisal: bool = False) -> GRUPredictor:
        """Load a next-action checkpoint (see models.next_action.training.save_next_action)."""
        return cls(load_next_action(path, device=device), device=device, surprisal=surprisal)

    # -- entry points ---------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[list[tuple[str, float]]]:
        _check_round(states, events, k)
        return [p.top for p in self.predict_events(states, events, k)]

    @torch.no_grad()
    def predict_events(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[EventPrediction]:
        """``predict`` with each event's window and surprisal (one event per user, in any time order)."""
        _check_round(states, events, k)
        if not states:
            return []
        self._prepare(states)
        return [r[0] for r in self._steps(states, [[e] for e in events], k, in_order=False)]

    @torch.no_grad()
    def predict_many(self, states: list[UserState], sequences: list[list[ActionEvent]],
                     k: int) -> list[list[EventPrediction]]:
        """One ``NextActionModel.steps`` call for every user whose event times do not decrease
        (stored window included: then the result equals ``predict`` round by round); the few
        users with out-of-order events go through ``predict`` round by round."""
        _check_sequences(states, sequences, k)
        self._prepare(states)
        in_order = [bool(events) and _in_time_order(state, events)
                    for state, events in zip(states, sequences, strict=True)]
        results: list[list[EventPrediction]] = [[] for _ in states]
        for group in (True, False):
            rows = [i for i, events in enumerate(sequences) if events and in_order[i] is group]
            if not rows:
                continue
            picked, chunks = [states[i] for i in rows], [sequences[i] for i in rows]
            done = self._steps(picked, chunks, k, in_order=True) if group else \
                predict_in_rounds(self, picked, chunks, k)
            for i, ranked in zip(rows, done, strict=False):
                results[i] = ranked
        return results

    # -- one call ---------------------------------------------------------------------------------

    def _steps(self, states: list[UserState], sequences: list[list[ActionEvent]], k: int, *,
               in_order: bool) -> list[list[EventPrediction]]:
        counts = [len(events) for events in sequences]
        bounds = np.cumsum([0] + counts).tolist()
        previous: list[tuple[int | None, float | None, float | None]] = []
        for state, events in zip(states, sequences, strict=False):
            previous.append((state.last_ts_ms, state.last_lat, state.last_lon))
            previous.extend((e.ts_ms, e.lat, e.lon) for e in events[:-1])
        encoded = encode_next_events([e for events in sequences for e in events], previous, self._vocab, self._spec)
        new = [_select(encoded, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
        hidden = torch.from_numpy(np.stack([self._hidden_of(s) for s in states])).to(self._device)
        window = EventTensors.collate([s._encoded if s._encoded is not None else self._no_events for s in states],
                                      align="right").to(self._device)
        before_hidden = hidden
        history = self._advance_history(states, sequences)
        x = EventTensors.collate(new).to(self._device)
        profile = ProfileTensors.collate(history.after).to(self._device) if self._spec.profile_size else None
        consumed = self._bits(history.filter_before)
        log_probs, out = self._model.steps(x, hidden, window, profile, consumed)
        ids = torch.from_numpy(encoded.tokens).to(self._device)
        if self._baseline is None:
            top, chosen = self._top_k(log_probs, k), log_probs
        else:
            top, chosen = self._baseline_top_k(encoded.tokens, history, k)
        surprisal = self._surprisals(states, window, before_hidden, history, chosen, ids, counts) \
            if self._surprisal else [None] * len(ids)
        finals = out[torch.arange(len(states), device=self._device), torch.tensor(counts, device=self._device) - 1]
        results = []
        for state, events, rows, h, a in zip(states, sequences, new, finals.cpu().numpy(), bounds, strict=False):
            windows = self._advance(state, events, rows) if in_order else self._append(state, events[0], rows)
            state.hidden = h.astype(np.float32, copy=True) if self._baseline is None else None
            state.model_version = self.version
            results.append([EventPrediction(ranked, n, span, s) for ranked, (n, span), s in
                            zip(top[a:a + len(events)], windows, surprisal[a:a + len(events)], strict=False)])
        return results

    def _advance_history(self, states: list[UserState], sequences: list[list[ActionEvent]]) -> _History:
        """Add the new events to each user's profile and filter, keeping snapshots for the model."""
        before, after, f_before, f_after = [], [], [], []
        for state, events in zip(states, sequences, strict=False):
            profile = state.profile if state.profile is not None else Profile(0)
            weights = profile.weights()
            mass = float(weights.sum())
            probs = (weights / mass if mass > 0 else weights).astype(np.float32)
            ids = state._profile_ids if state._profile_ids is not None else profile.slot_ids(self._vocab.ids, OOV_ID)
            before.append(ProfileSnapshots(ids[None].astype(np.int32), probs[None], np.array([mass], np.float32)))
            after.append(profile_snapshots((e.token for e in events), self._vocab.ids, profile, self._decay,
                                           slot_ids=ids, oov_id=OOV_ID))
            state._profile_ids = ids
            if state.consumed is not None:
                f_before.append(state.consumed.bits.copy())
                rows = []
                for event in events:
                    state.consumed.add(event.token)
                    rows.append(state.consumed.bits.copy())
                f_after.append(np.stack(rows))
        filters = self._excludes or self._baseline is not None and self._model.config.exclude_consumed
        return _History(before, after, f_before if filters and f_before else None,
                        f_after if filters and f_after else None)

    def _bits(self, filters: list[np.ndarray] | None) -> torch.Tensor | None:
        if not self._excludes or filters is None:
            return None
        return torch.from_numpy(np.stack(filters)).to(self._device)

    def _surprisals(self, states: list[UserState], window: EventTensors, hidden: torch.Tensor, history: _History,
                    log_probs: torch.Tensor, ids: torch.Tensor, counts: list[int]) -> list[float | None]:
        """-log p of each new event under the prediction before it: the previous row of this call,
        or for a user's first new event the prediction after its stored last event."""
        starts = np.cumsum([0] + counts[:-1])
        prior = self._prior_log_probs(states, window, hidden, history)
        out: list[float | None] = []
        for u, (start, count) in enumerate(zip(starts.tolist(), counts, strict=False)):
            for j in range(count):
                token = int(ids[start + j])
                row = prior[u] if j == 0 else log_probs[start + j - 1]
                out.append(None if row is None or token in (PAD_ID, OOV_ID) else -float(row[token]))
        return out

    def _prior_log_probs(self, states: list[UserState], window: EventTensors, hidden: torch.Tensor,
                         history: _History) -> list[torch.Tensor | None]:
        """The prediction after each user's stored last event (None for a user without one)."""
        has = [bool(s.window) for s in states]
        if not any(has):
            return [None] * len(states)
        if self._baseline is not None:
            last = np.array([self._vocab.encode(s.window[-1].token) if s.window else -1 for s in states])
            scores = self._baseline_scores(last, history.before, history.filter_before)
            probs = torch.from_numpy(np.log(np.maximum(baseline_probabilities(scores, self._popularity), 1e-12)))
            return [probs[u] if has[u] else None for u in range(len(states))]
        profile = ProfileTensors.stack(history.before).to(self._device) if self._spec.profile_size else None
        consumed = self._bits(history.filter_before)
        log_probs = self._model.log_probs_after(hidden, window, profile, consumed)
        return [log_probs[u] if has[u] else None for u in range(len(states))]

    # -- baselines ------------------------------------------------------------------------------

    def _baseline_scores(self, last: np.ndarray, profiles: list[ProfileSnapshots],
                         filters: list[np.ndarray] | None) -> np.ndarray:
        """The served baseline's scores [n, vocab] after events whose ids are ``last``, with the
        profile (and filter bits) after each."""
        snap = ProfileSnapshots.concat(profiles) if profiles else ProfileSnapshots.empty(len(last), 0)
        consumed = None
        if filters is not None and self._consumed_index.shape[1]:
            bits = np.concatenate([f.reshape(-1, f.shape[-1]) for f in filters])
            consumed = np.asarray(bits[:, self._consumed_index].all(-1), dtype=bool)
        context = TargetContext([np.array([i]) for i in last.tolist()], snap.ids.astype(np.int64), snap.probs,
                                consumed)
        if self._baseline is None:
            raise ModelError(f"{self.version} serves the model, not a baseline")
        return self._baseline.scores(context)

    def _baseline_top_k(self, ids: np.ndarray, history: _History, k: int
                        ) -> tuple[list[list[tuple[str, float]]], torch.Tensor]:
        scores = self._baseline_scores(ids, history.after, history.filter_after)
        probs = baseline_probabilities(scores, self._popularity)
        scores[:, [PAD_ID, OOV_ID]] = -np.inf
        vocab_ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        order = np.lexsort((vocab_ids, -np.broadcast_to(self._popularity, scores.shape), -scores), axis=-1)
        order = order[:, :min(k, scores.shape[1] - 2)]
        top = [[(self._tokens[i], float(probs[row, i])) for i in picks] for row, picks in enumerate(order.tolist())]
        return top, torch.from_numpy(np.log(np.maximum(probs, 1e-12)))

    # -- state upkeep ---------------------------------------------------------------------------

    def _advance(self, state: UserState, events: list[ActionEvent], encoded: EncodedEvents) -> list[tuple[int, float]]:
        """``update_window`` for events in time order at once: the window becomes the last
        ``window_size`` events within the span of the newest. Returns each event's window
        (events, span in seconds) as ``update_window`` would have left it."""
        old, n_old = state._encoded if state._encoded is not None else self._no_events, len(state.window)
        ts = np.concatenate([old.ts_ms, encoded.ts_ms])
        ends = np.arange(n_old, len(ts))
        firsts = np.searchsorted(ts, ts[n_old:] - self._span_ms, side="right")
        np.maximum(firsts, ends + 1 - self.window_size, out=firsts)
        start, newest = int(firsts[-1]), events[-1]
        added = list(events)
        if start < n_old:
            state.window = state.window[start:] + added
            pairs = zip(_columns(old), _columns(encoded), strict=True)
            state._encoded = EncodedEvents(*(np.concatenate([a[start:], b]) for a, b in pairs))
        else:
            state.window, state._encoded = added[start - n_old:], _select(encoded, slice(start - n_old, None))
        state.last_ts_ms = newest.ts_ms if state.last_ts_ms is None else max(state.last_ts_ms, newest.ts_ms)
        state.last_lat, state.last_lon = newest.lat, newest.lon
        state.event_count += len(events)
        sizes, spans = (ends - firsts + 1).tolist(), (ts[n_old:] - ts[firsts]).tolist()
        return [(n, span / 1000) for n, span in zip(sizes, spans, strict=True)]

    def _append(self, state: UserState, event: ActionEvent, encoded: EncodedEvents) -> list[tuple[int, float]]:
        """``update_window`` for one event in any time order."""
        update_window(state, event, window_size=self.window_size, window_span_s=self.window_span_s, encoded=encoded)
        window = state.window
        return [(len(window), (window[-1].ts_ms - window[0].ts_ms) / 1000 if window else 0.0)]

    def _hidden_of(self, state: UserState) -> np.ndarray:
        size = self._model.config.hidden_dim
        if state.hidden is None:
            return np.zeros(size, dtype=np.float32)
        if state.hidden.shape != (size,):
            raise ModelError(f"user state hidden has shape {state.hidden.shape}, model {self.version} "
                             f"needs ({size},)")
        return state.hidden

    def _prepare(self, states: list[UserState]) -> None:
        """Replay stale states, then make sure every state has this model's caches and history."""
        self._replay_stale([s for s in states if s.model_version != self.version])
        for state in states:
            if state._encoded is None or len(state._encoded) != len(state.window):
                state._encoded = encode_events(state.window, self._vocab, self._spec) if state.window \
                    else self._no_events
            self._ensure_history(state)

    def _ensure_history(self, state: UserState) -> None:
        """A profile of this model's size and, when the model uses it, a filter of its size;
        seeded from the window when the state has none (a state from before they existed)."""
        size, spec = self._spec.profile_size, self._spec
        if state.profile is None or state.profile.size != size:
            old = state.profile
            if old is None:
                state.profile = Profile(size)
                for event in state.window:
                    state.profile.add(event.token, self._decay)
            else:
                slots = old.filled()
                state.profile = Profile(size, [t for t, _ in slots], [w for _, w in slots])
            state._profile_ids = None
        wants_filter = spec.consumed_hashes > 0 and self._model.config.exclude_consumed
        if not wants_filter:
            state.consumed = None
        elif state.consumed is None or len(state.consumed.bits) != spec.consumed_bits or \
                state.consumed.n_hashes != spec.consumed_hashes:
            state.consumed = ConsumedFilter(spec.consumed_bits, spec.consumed_hashes)
            for event in state.window:
                state.consumed.add(event.token)

    @torch.no_grad()
    def _replay_stale(self, states: list[UserState]) -> None:
        """Rebuild the hidden state of states advanced by another model (see the class doc)."""
        for state in states:
            state._encoded = None
            state._profile_ids = None
        replay = [s for s in states if s.window]
        for state in states:
            state.hidden = None
            state.model_version = self.version
        if not replay or self._baseline is not None:
            return
        encoded = [encode_events(s.window, self._vocab, self._spec) for s in replay]
        out = self._model.hidden_states(EventTensors.collate(encoded).to(self._device))
        last = torch.tensor([len(e) - 1 for e in encoded], device=self._device)
        finals = out[torch.arange(len(replay), device=self._device), last].cpu().numpy()
        for state, h in zip(replay, finals, strict=False):
            state.hidden = h.astype(np.float32, copy=True)
        logger.info("rebuilt %d hidden states for model %s by replaying their windows", len(replay), self.version)

    def _top_k(self, log_probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        log_probs = log_probs.index_fill(1, torch.tensor([PAD_ID, OOV_ID], device=log_probs.device), -np.inf)
        values, ids = log_probs.topk(min(k, log_probs.shape[1] - 2), dim=1)
        tokens = self._tokens
        return [[(tokens[i], p) for p, i in zip(row_p, row_i, strict=False)]
                for row_p, row_i in zip(values.exp().tolist(), ids.tolist(), strict=False)]


def _counts_of(loaded: LoadedNextAction) -> TrainingCounts:
    """The checkpoint's training counts (popularity and transitions) as the baselines read them."""
    model = loaded.model
    counts = TrainingCounts(model.config.vocab_size)
    counts.popularity = model.popularity.detach().cpu().numpy().astype(np.float64)
    size = model.config.vocab_size
    for key, count in zip(model.transition_keys.cpu().tolist(), model.transition_counts.cpu().tolist(), strict=False):
        counts._transitions[key // size][key % size] = int(round(count))
    return counts


def _in_time_order(state: UserState, events: list[ActionEvent]) -> bool:
    """Whether the stored window, the latest event time and the new events never go back in time."""
    ts = [e.ts_ms for e in events]
    if state.last_ts_ms is not None and ts[0] < state.last_ts_ms:
        return False  # (every window event is at most last_ts_ms)
    if any(later < earlier for earlier, later in zip(ts, ts[1:], strict=False)):
        return False
    if state._encoded is None or len(state._encoded) < 2:
        return True
    window_ts = state._encoded.ts_ms
    return bool(np.all(window_ts[1:] >= window_ts[:-1]))


def _check_sequences(states: list[UserState], sequences: list[list[ActionEvent]], k: int) -> None:
    if len(states) != len(sequences):
        raise ModelError(f"predict_many needs one event list per state, got {len(states)} states and "
                         f"{len(sequences)} lists")
    if k < 1:
        raise ModelError(f"k must be >= 1, got {k}")


def _check_round(states: list[UserState], events: list[ActionEvent], k: int) -> None:
    if len(states) != len(events):
        raise ModelError(f"predict needs one event per state, got {len(states)} states and {len(events)} events")
    if k < 1:
        raise ModelError(f"k must be >= 1, got {k}")
