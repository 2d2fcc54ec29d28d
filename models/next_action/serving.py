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
from models.next_action.features import OOV_ID, PAD_ID, concat_rows, encode_events, encode_runs
from models.next_action.history import ConsumedFilter, Profile, ProfileSnapshots, advance_profiles
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
                  encoded: np.ndarray | None = None) -> None:
    """Append ``event`` to the window, keep the last ``window_size`` events whose time is within
    ``window_span_s`` of the event's, and record it as the user's latest event (a late event
    never moves ``last_ts_ms`` back). ``encoded`` (the event as one ``features.event_row_dtype``
    record) keeps the encoding cache in step."""
    cache = state._encoded
    cache = concat_rows([cache, encoded]) if encoded is not None and cache is not None and \
        len(cache) == len(state.window) else None
    window = state.window + [event]
    start = max(0, len(window) - window_size)
    ts = cache["ts_ms"][start:] if cache is not None else np.fromiter((w.ts_ms for w in window[start:]), np.int64)
    inside = ts > event.ts_ms - int(round(window_span_s * 1000.0))
    if inside.all():
        state.window, state._encoded = window[start:], None if cache is None else cache[start:]
    else:
        keep = start + np.flatnonzero(inside)
        state.window, state._encoded = [window[i] for i in keep], None if cache is None else cache[keep]
    state.last_ts_ms = event.ts_ms if state.last_ts_ms is None else max(state.last_ts_ms, event.ts_ms)
    state.last_lat, state.last_lon = event.lat, event.lon
    state.event_count += 1


@dataclass(frozen=True)
class _Batch:
    """One call's new events back to back: user u's ``counts[u]`` events from index ``starts[u]``;
    ``user`` and ``local`` say whose each event is and its index among that user's."""

    events: list[ActionEvent]
    counts: np.ndarray
    starts: np.ndarray
    user: np.ndarray
    local: np.ndarray

    @classmethod
    def of(cls, sequences: list[list[ActionEvent]]) -> _Batch:
        counts = np.array([len(events) for events in sequences], dtype=np.int64).reshape(len(sequences))
        starts = np.cumsum(counts) - counts
        user = np.repeat(np.arange(len(counts)), counts)
        local = np.arange(len(user)) - starts[user]
        return cls([e for events in sequences for e in events], counts, starts, user, local)


@dataclass
class _History:
    """One call's long-term inputs: the profile before each user's new events [users] and after
    each new event [events], and the consumed filter's bits before them [users, bits] and after
    each [events, bits] (None when not needed)."""

    before: ProfileSnapshots
    after: ProfileSnapshots
    filter_before: np.ndarray | None
    filter_after: np.ndarray | None


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
        self._specials = torch.tensor([PAD_ID, OOV_ID], device=self._device)
        # A model without a cell embedding never reads the cells: encoding skips their H3 lookups.
        self._cells = self._model.cell_embedding is not None
        self._no_events = encode_events([], self._vocab, self._spec).to_rows()
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
        self._wants_filter = bool(self._spec.consumed_hashes > 0 and loaded.model.config.exclude_consumed)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu", *,
                        surprisal: bool = False) -> GRUPredictor:
        """Load a next-action checkpoint (see models.next_action.training.save_next_action)."""
        return cls(load_next_action(path, device=device), device=device, surprisal=surprisal)

    # -- entry points ---------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[list[tuple[str, float]]]:
        _check_round(states, events, k)
        return [p.top for p in self.predict_events(states, events, k)]

    @torch.inference_mode()
    def predict_events(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[EventPrediction]:
        """``predict`` with each event's window and surprisal (one event per user, in any time order)."""
        _check_round(states, events, k)
        if not states:
            return []
        self._prepare(states)
        return [r[0] for r in self._steps(states, [[e] for e in events], k, in_order=False)]

    @torch.inference_mode()
    def predict_many(self, states: list[UserState], sequences: list[list[ActionEvent]],
                     k: int) -> list[list[EventPrediction]]:
        """One ``NextActionModel.steps`` call for every user whose event times do not decrease
        (stored window included: then the result equals ``predict`` round by round); the few
        users with out-of-order events go through ``predict`` round by round."""
        _check_sequences(states, sequences, k)
        self._prepare(states)
        in_order = _in_time_order(states, sequences)
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
        """One model call for users with at least one new event each; every per-event step runs
        on the whole batch at once (numpy or torch), Python only touches each user a few times."""
        batch = _Batch.of(sequences)
        new = encode_runs(batch.events, batch.starts, [(s.last_ts_ms, s.last_lat, s.last_lon) for s in states],
                          self._vocab, self._spec, cells=self._cells).to_rows()
        old_lengths = np.array([len(s.window) for s in states], dtype=np.int64)
        old_rows = concat_rows([s._encoded for s in states])  # type: ignore[misc]  # (_prepare made them all)
        window = EventTensors.pad_rows(old_rows, old_lengths, align="right").to(self._device)
        x = EventTensors.pad_rows(new, batch.counts).to(self._device)
        hidden = torch.from_numpy(np.stack([self._hidden_of(s) for s in states])).to(self._device)
        history = self._advance_history(states, batch)
        profile = ProfileTensors.pad(history.after, batch.counts).to(self._device) if self._spec.profile_size \
            else None
        log_probs, out = self._model.steps(x, hidden, window, profile, self._bits(history.filter_before))
        ids = new["tokens"]
        if self._baseline is None:
            top, chosen = self._top_k(log_probs, k), log_probs
        else:
            top, chosen = self._baseline_top_k(ids, history, k)
        surprisal = self._surprisals(states, window, hidden, history, chosen, ids, batch) \
            if self._surprisal else [None] * len(ids)
        last = torch.from_numpy(batch.counts - 1).to(self._device)
        finals = out[torch.arange(len(states), device=self._device), last].cpu().numpy()
        if in_order:
            sizes, spans = self._advance(states, sequences, batch, old_rows, old_lengths, new)
        else:
            appended = [self._append(state, events[0], new[i:i + 1])
                        for i, (state, events) in enumerate(zip(states, sequences, strict=True))]
            sizes, spans = map(list, zip(*appended, strict=True))
        for state, h in zip(states, finals, strict=True):
            state.hidden = h.copy() if self._baseline is None else None
            state.model_version = self.version
        predictions = list(map(EventPrediction, top, sizes, spans, surprisal))
        return [predictions[a:a + n] for a, n in zip(batch.starts.tolist(), batch.counts.tolist(), strict=True)]

    def _advance_history(self, states: list[UserState], batch: _Batch) -> _History:
        """Add the new events to each user's profile and filter, keeping snapshots for the model."""
        slot_ids = []
        for state in states:
            if state._profile_ids is None:
                state._profile_ids = state.profile.slot_ids(self._vocab.ids, OOV_ID)  # type: ignore[union-attr]
            slot_ids.append(state._profile_ids)
        tokens = [e.token for e in batch.events]
        runs = [tokens[a:a + n] for a, n in zip(batch.starts.tolist(), batch.counts.tolist(), strict=True)]
        before, after = advance_profiles(runs, self._vocab.ids, [s.profile for s in states],  # type: ignore[misc]
                                         self._decay, slot_ids, OOV_ID)
        filter_before = filter_after = None
        if states and states[0].consumed is not None:  # (_ensure_history gives all or none a filter)
            filter_before = np.stack([s.consumed.bits for s in states])  # type: ignore[union-attr]
            after_rows = []
            for state, run in zip(states, runs, strict=True):
                for token in run:
                    state.consumed.add(token)  # type: ignore[union-attr]
                    if self._baseline is not None:
                        after_rows.append(state.consumed.bits.copy())  # type: ignore[union-attr]
            filter_after = np.stack(after_rows) if after_rows else None
        wanted = self._excludes or self._baseline is not None and self._model.config.exclude_consumed
        return _History(before, after, filter_before if wanted else None, filter_after if wanted else None)

    def _bits(self, filters: np.ndarray | None) -> torch.Tensor | None:
        if not self._excludes or filters is None:
            return None
        return torch.from_numpy(filters).to(self._device)

    def _surprisals(self, states: list[UserState], window: EventTensors, hidden: torch.Tensor, history: _History,
                    log_probs: torch.Tensor, ids: np.ndarray, batch: _Batch) -> list[float | None]:
        """-log p of each new event under the prediction before it: the previous row of this call,
        or for a user's first new event the prediction after its stored last event."""
        prior, has_prior = self._prior_log_probs(states, window, hidden, history)
        first = batch.local == 0
        token = torch.from_numpy(ids).to(self._device)
        previous = torch.from_numpy(np.maximum(np.arange(len(ids)) - 1, 0)).to(self._device)
        picked = log_probs[previous, token]
        if prior is not None:
            picked = torch.where(torch.from_numpy(first).to(self._device),
                                 prior[torch.from_numpy(batch.user).to(self._device), token], picked)
        scored = (ids != PAD_ID) & (ids != OOV_ID) & (~first | has_prior[batch.user])
        return [-p if ok else None for p, ok in zip(picked.tolist(), scored.tolist(), strict=True)]

    def _prior_log_probs(self, states: list[UserState], window: EventTensors, hidden: torch.Tensor,
                         history: _History) -> tuple[torch.Tensor | None, np.ndarray]:
        """The prediction after each user's stored last event [users, vocab] (None when no user
        has one), and which users have one."""
        has = np.array([bool(s.window) for s in states], dtype=bool).reshape(len(states))
        if not has.any():
            return None, has
        if self._baseline is not None:
            last = np.array([self._vocab.encode(s.window[-1].token) if s.window else -1 for s in states])
            scores = self._baseline_scores(last, history.before, history.filter_before)
            probs = np.log(np.maximum(baseline_probabilities(scores, self._popularity), 1e-12))
            return torch.from_numpy(probs).to(self._device), has
        profile = ProfileTensors.of(history.before).to(self._device) if self._spec.profile_size else None
        return self._model.log_probs_after(hidden, window, profile, self._bits(history.filter_before)), has

    # -- baselines ------------------------------------------------------------------------------

    def _baseline_scores(self, last: np.ndarray, snapshots: ProfileSnapshots,
                         filters: np.ndarray | None) -> np.ndarray:
        """The served baseline's scores [n, vocab] after events whose ids are ``last``, with the
        profile snapshots (and filter bits [n, bits]) after each."""
        consumed = None
        if filters is not None and self._consumed_index.shape[1]:
            consumed = np.asarray(filters[:, self._consumed_index].all(-1), dtype=bool)
        context = TargetContext([np.array([i]) for i in last.tolist()], snapshots.ids.astype(np.int64),
                                snapshots.probs, consumed)
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
        return top, torch.from_numpy(np.log(np.maximum(probs, 1e-12))).to(self._device)

    # -- state upkeep ---------------------------------------------------------------------------

    def _advance(self, states: list[UserState], sequences: list[list[ActionEvent]], batch: _Batch,
                 old_rows: np.ndarray, old_lengths: np.ndarray, new: np.ndarray) -> tuple[list[int], list[float]]:
        """``update_window`` for every user's events, in time order, at once: each window becomes
        the last ``window_size`` of its events within the span of the newest. Returns each event's
        window size and span in seconds as ``update_window`` would have left them."""
        lengths = old_lengths + batch.counts
        offsets = np.cumsum(lengths) - lengths
        old_at = np.repeat(offsets - (np.cumsum(old_lengths) - old_lengths), old_lengths) + np.arange(len(old_rows))
        new_at = (offsets + old_lengths)[batch.user] + batch.local
        combined = np.empty(len(old_rows) + len(new), dtype=new.dtype)
        combined[old_at], combined[new_at] = old_rows, new
        ts = combined["ts_ms"]
        firsts = np.maximum(self._span_starts(ts, lengths, new_at), offsets[batch.user])
        np.maximum(firsts, new_at + 1 - self.window_size, out=firsts)
        keep_from = (firsts[batch.starts + batch.counts - 1] - offsets).tolist()
        for state, events, start, n_old, offset, length in zip(
                states, sequences, keep_from, old_lengths.tolist(), offsets.tolist(), lengths.tolist(), strict=True):
            state._encoded = combined[offset + start:offset + length].copy()
            state.window = state.window[start:] + events if start < n_old else events[start - n_old:]
            newest = events[-1]
            state.last_ts_ms = newest.ts_ms if state.last_ts_ms is None else max(state.last_ts_ms, newest.ts_ms)
            state.last_lat, state.last_lon = newest.lat, newest.lon
            state.event_count += len(events)
        return (new_at - firsts + 1).tolist(), ((ts[new_at] - ts[firsts]) / 1000).tolist()

    def _span_starts(self, ts: np.ndarray, lengths: np.ndarray, at: np.ndarray) -> np.ndarray:
        """For the rows ``at`` of per-user runs of times (``lengths[u]`` rows each, back to back,
        each run non-decreasing): the first row of the same run within the window span of it, or
        one of an earlier run (the caller clamps)."""
        low, high = int(ts.min()), int(ts.max())
        stride = high - low + 1
        if stride * len(lengths) + self._span_ms < 2 ** 62:  # one search on keys that order users apart
            keys = ts - low + np.repeat(np.arange(len(lengths)) * stride, lengths)
            found: np.ndarray = np.searchsorted(keys, keys[at] - self._span_ms, side="right")
            return found
        bounds = np.cumsum(lengths)
        run = np.searchsorted(bounds, at, side="right")
        return np.array([int(bounds[u] - lengths[u]) + int(np.searchsorted(ts[bounds[u] - lengths[u]:bounds[u]],
                                                                            ts[i] - self._span_ms, side="right"))
                         for i, u in zip(at.tolist(), run.tolist(), strict=True)], dtype=np.int64).reshape(len(at))

    def _append(self, state: UserState, event: ActionEvent, encoded: np.ndarray) -> tuple[int, float]:
        """``update_window`` for one event in any time order: the window's size and span after it."""
        update_window(state, event, window_size=self.window_size, window_span_s=self.window_span_s, encoded=encoded)
        window = state.window
        return len(window), (window[-1].ts_ms - window[0].ts_ms) / 1000 if window else 0.0

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
        stale = [s for s in states if s.model_version != self.version]
        if stale:
            self._replay_stale(stale)
        size, wants_filter = self._spec.profile_size, self._wants_filter
        for state in states:
            if state._encoded is None or len(state._encoded) != len(state.window):
                state._encoded = encode_events(state.window, self._vocab, self._spec, cells=self._cells).to_rows() \
                    if state.window else self._no_events
            if state.profile is None or len(state.profile.tokens) != size or \
                    (state.consumed is not None) is not wants_filter or wants_filter:
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
        if not self._wants_filter:
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
        values, ids = log_probs.index_fill(1, self._specials, -np.inf).topk(min(k, log_probs.shape[1] - 2), dim=1)
        width = ids.shape[1]
        pairs = list(zip(map(self._tokens.__getitem__, ids.cpu().numpy().ravel().tolist()),
                         values.exp().cpu().numpy().ravel().tolist(), strict=True))
        return [pairs[i:i + width] for i in range(0, len(pairs), width)]


def _counts_of(loaded: LoadedNextAction) -> TrainingCounts:
    """The checkpoint's training counts (popularity and transitions) as the baselines read them."""
    model = loaded.model
    counts = TrainingCounts(model.config.vocab_size)
    counts.popularity = model.popularity.detach().cpu().numpy().astype(np.float64)
    size = model.config.vocab_size
    for key, count in zip(model.transition_keys.cpu().tolist(), model.transition_counts.cpu().tolist(), strict=False):
        counts._transitions[key // size][key % size] = int(round(count))
    return counts


def _in_time_order(states: list[UserState], sequences: list[list[ActionEvent]]) -> list[bool]:
    """Per user: whether the stored window, the latest event time and the new events never go
    back in time (windows cached, as after ``GRUPredictor._prepare``)."""
    if not states:
        return []
    # Each user's run of times: the window's, the latest event's (every window event is at most
    # that), then the new events'. Checked for all users at once, runs back to back.
    windows = concat_rows([s._encoded for s in states])["ts_ms"]  # type: ignore[misc]
    window_lengths = np.array([len(s.window) for s in states], dtype=np.int64)
    latest = [s.last_ts_ms for s in states]
    has_latest = np.array([t is not None for t in latest], dtype=bool)
    counts = np.array([len(events) for events in sequences], dtype=np.int64)
    lengths = window_lengths + has_latest + counts
    starts = np.cumsum(lengths) - lengths
    ts = np.empty(int(lengths.sum()), dtype=np.int64)
    ts[_run_positions(starts, window_lengths)] = windows
    ts[(starts + window_lengths)[has_latest]] = [t for t in latest if t is not None]
    ts[_run_positions(starts + window_lengths + has_latest, counts)] = [e.ts_ms for events in sequences for e in events]
    later = np.flatnonzero(ts[1:] < ts[:-1]) + 1
    owner = np.searchsorted(starts + lengths, later, side="right")
    in_order = np.ones(len(states), dtype=bool)
    in_order[owner[later != starts[owner]]] = False  # (a drop into the next run is no drop)
    return in_order.tolist()


def _run_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of runs of ``lengths[i]`` elements starting at ``starts[i]``, back to back."""
    firsts = np.cumsum(lengths) - lengths
    return np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()))


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
