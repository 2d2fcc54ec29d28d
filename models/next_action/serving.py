"""What the streaming glue calls: per-user state, its binary encoding, and next-action predictors."""

from __future__ import annotations

import heapq
import logging
import os
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from models.exceptions import ModelError
from models.next_action.features import DENSE_NAMES, OOV_ID, PAD_ID, EncodedEvents, EventRecord, encode_events, encode_next_events
from models.next_action.model import EventTensors
from models.next_action.training import LoadedNextAction, load_next_action

__all__ = ["STATE_FORMAT_VERSION", "WindowEvent", "ActionEvent", "UserState", "NextActionPredictor",
           "EventPrediction", "update_window", "predict_in_rounds", "GRUPredictor", "MarkovPredictor"]

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
_MAGIC = b"NA"
# magic, format version, flags, last_ts_ms, last_lat, last_lon, event_count, hidden size,
# window length, model version length. Then: the model version (utf-8), hidden (float32), and the
# window as columns: ts_ms (int64), located (uint8), lat and lon (float64, 0 when not located),
# token byte lengths (uint16), then the utf-8 tokens back to back. All little-endian.
_HEADER = struct.Struct("<2sBBqddQIIH")
_HAS_HIDDEN, _HAS_LAST_TS, _HAS_LAST_LOCATION = 1, 2, 4
_HAS_LOCATION_DENSE = DENSE_NAMES.index("has_location")
_WINDOW_COLUMNS = (("ts_ms", "<i8"), ("located", "u1"), ("lat", "<f8"), ("lon", "<f8"), ("token_bytes", "<u2"))


# The serving API's names for the one event record of models.next_action.features: an event kept in a user's
# window (its token stays a string so any model can reuse it), and a user's new event to predict from.
WindowEvent = ActionEvent = EventRecord


@dataclass(frozen=True, slots=True)
class EventPrediction:
    """What one event yields: the top-k (token, probability) of the user's next action, and the
    window the model saw (its events and their span in seconds, the event included)."""

    top: list[tuple[str, float]]
    window_events: int
    window_span_s: float


@dataclass(eq=False)
class UserState:
    """Everything kept per user between events (compared field by field, not with ==).

    Change ``window`` only through ``update_window`` (the predictors do): a private, unserialized
    cache of its encoding follows it within a process.
    """

    hidden: np.ndarray | None = None
    window: list[WindowEvent] = field(default_factory=list)
    last_ts_ms: int | None = None
    last_lat: float | None = None
    last_lon: float | None = None
    event_count: int = 0
    model_version: str = ""
    # The window encoded for ``model_version`` (not serialized; rebuilt when missing or stale).
    _encoded: EncodedEvents | None = field(default=None, init=False, repr=False)

    def to_bytes(self) -> bytes:
        """Versioned little-endian binary encoding (hidden as raw float32, tokens as utf-8)."""
        hidden = b"" if self.hidden is None else np.ascontiguousarray(self.hidden, dtype="<f4").tobytes()
        version = self.model_version.encode("utf-8")
        flags = (_HAS_HIDDEN if self.hidden is not None else 0) | \
            (_HAS_LAST_TS if self.last_ts_ms is not None else 0) | \
            (_HAS_LAST_LOCATION if self.last_lat is not None and self.last_lon is not None else 0)
        header = _HEADER.pack(_MAGIC, STATE_FORMAT_VERSION, flags, self.last_ts_ms or 0,
                              self.last_lat or 0.0, self.last_lon or 0.0, self.event_count,
                              len(hidden) // 4, len(self.window), len(version))
        return b"".join([header, version, hidden, _pack_window(self.window, self._encoded)])

    @classmethod
    def from_bytes(cls, data: bytes) -> "UserState":
        """Inverse of ``to_bytes``; raises ModelError for anything else (or a newer format)."""
        try:
            return _unpack_state(bytes(data))
        except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise ModelError(f"user state is corrupt ({len(data)} bytes): {exc}") from exc


def _pack_window(window: list[WindowEvent], encoded: EncodedEvents | None = None) -> bytes:
    """The window as columns; times and places come from ``encoded`` (the model's cache of the
    same events) when it is there, which saves a pass over the events in Python."""
    tokens = [w.token.encode("utf-8") for w in window]
    lengths = [len(t) for t in tokens]
    if lengths and max(lengths) > 0xFFFF:
        raise ModelError("a window token is longer than 65535 utf-8 bytes")
    if encoded is not None and len(encoded) == len(window):
        columns = {"ts_ms": encoded.ts_ms, "located": encoded.dense[:, _HAS_LOCATION_DENSE] > 0,
                   "lat": encoded.lat, "lon": encoded.lon}
    else:
        located = [w.lat is not None and w.lon is not None for w in window]
        columns = {"ts_ms": [w.ts_ms for w in window], "located": located,
                   "lat": [w.lat if h else 0.0 for w, h in zip(window, located)],
                   "lon": [w.lon if h else 0.0 for w, h in zip(window, located)]}
    columns["token_bytes"] = lengths
    return b"".join([np.asarray(columns[name], dtype=dtype).tobytes() for name, dtype in _WINDOW_COLUMNS] + tokens)


def _unpack_state(data: bytes) -> UserState:
    if len(data) < _HEADER.size or data[:2] != _MAGIC:
        raise ModelError(f"not a user state ({len(data)} bytes, no {_MAGIC!r} header)")
    (_, fmt, flags, last_ts, last_lat, last_lon, count, n_hidden, n_window,
     n_version) = _HEADER.unpack_from(data)
    if fmt != STATE_FORMAT_VERSION:
        raise ModelError(f"user state has format {fmt}, this version reads {STATE_FORMAT_VERSION} "
                         "(written by a newer release?)")
    offset = _HEADER.size + n_version
    version = data[_HEADER.size:offset].decode("utf-8")
    hidden = np.frombuffer(data, dtype="<f4", count=n_hidden, offset=offset).astype(np.float32)
    window = _unpack_window(data, offset + 4 * n_hidden, n_window)
    located = bool(flags & _HAS_LAST_LOCATION)
    return UserState(hidden=hidden if flags & _HAS_HIDDEN else None, window=window,
                     last_ts_ms=last_ts if flags & _HAS_LAST_TS else None,
                     last_lat=last_lat if located else None, last_lon=last_lon if located else None,
                     event_count=count, model_version=version)


def _unpack_window(data: bytes, offset: int, n: int) -> list[WindowEvent]:
    columns = {}
    for name, dtype in _WINDOW_COLUMNS:
        columns[name] = np.frombuffer(data, dtype=dtype, count=n, offset=offset).tolist()
        offset += n * np.dtype(dtype).itemsize
    ends = np.cumsum(columns["token_bytes"], dtype=np.int64) + offset
    if (ends[-1] if n else offset) != len(data):
        raise ValueError(f"window tokens end at byte {ends[-1] if n else offset}, the state has {len(data)}")
    starts = [offset] + ends[:-1].tolist()
    return [WindowEvent(data[a:b].decode("utf-8"), ts, lat if h else None, lon if h else None)
            for a, b, ts, h, lat, lon in zip(starts, ends.tolist(), columns["ts_ms"], columns["located"],
                                             columns["lat"], columns["lon"])]


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
        top = predictor.predict([states[i] for i in rows], [sequences[i][r] for i in rows], k)
        for i, ranked in zip(rows, top):
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
    return EncodedEvents(*(np.concatenate([x, y]) for x, y in zip(_columns(a), _columns(b))))


def _select(a: EncodedEvents, index: np.ndarray | slice) -> EncodedEvents:
    return EncodedEvents(*(x[index] for x in _columns(a)))


def _columns(a: EncodedEvents) -> tuple[np.ndarray, ...]:
    return a.tokens, a.cells, a.ts_ms, a.lat, a.lon, a.dense


class GRUPredictor:
    """NextActionModel behind the predictor protocol: ``predict`` is one batched ``step`` (one event
    per user), ``predict_many`` one ``steps`` call (all of each user's new events).

    Hot reload: a state last advanced by another model (its ``model_version`` differs) gets its
    hidden state rebuilt by replaying its stored window through this model, from a zero state
    (so it forgets what lay before the window); a state with an empty window starts from zeros.
    An event older than the user's last one gets a time gap of 0; deciding lateness is the
    caller's job.
    """

    def __init__(self, loaded: LoadedNextAction, *, device: torch.device | str = "cpu") -> None:
        self._model = loaded.model.to(device).eval()
        self._vocab, self._spec, self._device = loaded.vocab, loaded.spec, torch.device(device)
        self._tokens = [loaded.vocab.decode(i) for i in range(len(loaded.vocab))]
        self._no_events = encode_events([], self._vocab, self._spec)
        self.metadata = loaded.metadata
        self.version = loaded.version
        self.window_size = loaded.model.config.window_size
        self.window_span_s = loaded.model.config.window_span_s
        self._span_ms = int(round(self.window_span_s * 1000.0))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "GRUPredictor":
        """Load a next-action checkpoint (see models.next_action.training.save_next_action)."""
        return cls(load_next_action(path, device=device), device=device)

    @torch.no_grad()
    def predict(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[list[tuple[str, float]]]:
        _check_round(states, events, k)
        if not states:
            return []
        self._replay_stale([s for s in states if s.model_version != self.version])
        current = encode_next_events(events,
                                     [(s.last_ts_ms, s.last_lat, s.last_lon) for s in states],
                                     self._vocab, self._spec)
        hidden = torch.from_numpy(np.stack([self._hidden_of(s) for s in states])).to(self._device)
        for row, (state, event) in enumerate(zip(states, events)):
            self._ensure_cache(state)
            update_window(state, event, window_size=self.window_size, window_span_s=self.window_span_s,
                          encoded=_select(current, slice(row, row + 1)))
        x = EventTensors.collate([current]).map(lambda t: t[0]).to(self._device)
        window = EventTensors.collate([s._encoded for s in states], align="right").to(self._device)
        log_probs, h_new = self._model.step(x, hidden, window)
        for state, h in zip(states, h_new.cpu().numpy()):
            state.hidden, state.model_version = h.astype(np.float32, copy=True), self.version
        return self._top_k(log_probs, k)

    @torch.no_grad()
    def predict_many(self, states: list[UserState], sequences: list[list[ActionEvent]],
                     k: int) -> list[list[EventPrediction]]:
        """One ``NextActionModel.steps`` call for every user whose event times do not decrease
        (stored window included: then the result equals ``predict`` round by round); the few
        users with out-of-order events go through ``predict`` round by round."""
        _check_sequences(states, sequences, k)
        self._replay_stale([s for s in states if s.model_version != self.version])
        for state in states:
            self._ensure_cache(state)
        in_order = [bool(events) and _in_time_order(state, events) for state, events in zip(states, sequences)]
        results: list[list[EventPrediction]] = [[] for _ in states]
        for group, run in ((True, self._steps), (False, lambda *a: predict_in_rounds(self, *a))):
            rows = [i for i, events in enumerate(sequences) if events and in_order[i] is group]
            if rows:
                for i, ranked in zip(rows, run([states[i] for i in rows], [sequences[i] for i in rows], k)):
                    results[i] = ranked
        return results

    def _steps(self, states: list[UserState], sequences: list[list[ActionEvent]],
               k: int) -> list[list[EventPrediction]]:
        counts = [len(events) for events in sequences]
        bounds = np.cumsum([0] + counts).tolist()
        previous: list[tuple[int | None, float | None, float | None]] = []
        for state, events in zip(states, sequences):
            previous.append((state.last_ts_ms, state.last_lat, state.last_lon))
            previous.extend((e.ts_ms, e.lat, e.lon) for e in events[:-1])
        encoded = encode_next_events([e for events in sequences for e in events],
                                     previous, self._vocab, self._spec)
        new = [_select(encoded, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
        hidden = torch.from_numpy(np.stack([self._hidden_of(s) for s in states])).to(self._device)
        x = EventTensors.collate(new).to(self._device)
        window = EventTensors.collate([s._encoded for s in states], align="right").to(self._device)
        log_probs, out = self._model.steps(x, hidden, window)
        finals = out[torch.arange(len(states), device=self._device), torch.tensor(counts, device=self._device) - 1]
        top = self._top_k(log_probs, k)
        results = []
        for state, events, rows, h, a in zip(states, sequences, new, finals.cpu().numpy(), bounds):
            windows = self._advance(state, events, rows)
            state.hidden, state.model_version = h.astype(np.float32, copy=True), self.version
            results.append([EventPrediction(ranked, n, span) for ranked, (n, span) in zip(top[a:a + len(events)], windows)])
        return results

    def _advance(self, state: UserState, events: list[ActionEvent], encoded: EncodedEvents) -> list[tuple[int, float]]:
        """``update_window`` for events in time order at once: the window becomes the last
        ``window_size`` events within the span of the newest. Returns each event's window
        (events, span in seconds) as ``update_window`` would have left it."""
        old, n_old = state._encoded, len(state.window)
        ts = np.concatenate([old.ts_ms, encoded.ts_ms])
        ends = np.arange(n_old, len(ts))
        firsts = np.searchsorted(ts, ts[n_old:] - self._span_ms, side="right")
        np.maximum(firsts, ends + 1 - self.window_size, out=firsts)
        start, newest = int(firsts[-1]), events[-1]
        added = list(events)
        if start < n_old:
            state.window = state.window[start:] + added
            state._encoded = EncodedEvents(*(np.concatenate([a[start:], b]) for a, b in zip(_columns(old), _columns(encoded))))
        else:
            state.window, state._encoded = added[start - n_old:], _select(encoded, slice(start - n_old, None))
        state.last_ts_ms = newest.ts_ms if state.last_ts_ms is None else max(state.last_ts_ms, newest.ts_ms)
        state.last_lat, state.last_lon = newest.lat, newest.lon
        state.event_count += len(events)
        return [(n, span / 1000) for n, span in zip((ends - firsts + 1).tolist(), (ts[n_old:] - ts[firsts]).tolist())]

    def _hidden_of(self, state: UserState) -> np.ndarray:
        size = self._model.config.hidden_dim
        if state.hidden is None:
            return np.zeros(size, dtype=np.float32)
        if state.hidden.shape != (size,):
            raise ModelError(f"user state hidden has shape {state.hidden.shape}, model {self.version} "
                             f"needs ({size},)")
        return state.hidden

    def _ensure_cache(self, state: UserState) -> None:
        """(Re)encode the stored window when its cache is missing or was made for another model."""
        if state._encoded is None or len(state._encoded) != len(state.window):
            state._encoded = encode_events(state.window, self._vocab, self._spec) if state.window \
                else self._no_events

    @torch.no_grad()
    def _replay_stale(self, states: list[UserState]) -> None:
        """Rebuild the hidden state of states advanced by another model (see the class doc)."""
        for state in states:
            state._encoded = None
        replay = [s for s in states if s.window]
        for state in states:
            state.hidden = None
            state.model_version = self.version
        if not replay:
            return
        encoded = [encode_events(s.window, self._vocab, self._spec) for s in replay]
        out = self._model.hidden_states(EventTensors.collate(encoded).to(self._device))
        last = torch.tensor([len(e) - 1 for e in encoded], device=self._device)
        finals = out[torch.arange(len(replay), device=self._device), last].cpu().numpy()
        for state, h in zip(replay, finals):
            state.hidden = h.astype(np.float32, copy=True)
        logger.info("rebuilt %d hidden states for model %s by replaying their windows", len(replay), self.version)

    def _top_k(self, log_probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        log_probs = log_probs.index_fill(1, torch.tensor([PAD_ID, OOV_ID], device=log_probs.device), -np.inf)
        values, ids = log_probs.topk(min(k, log_probs.shape[1] - 2), dim=1)
        tokens = self._tokens
        return [[(tokens[i], p) for p, i in zip(row_p, row_i)]
                for row_p, row_i in zip(values.exp().tolist(), ids.tolist())]


class MarkovPredictor:
    """First-order Markov chain over tokens learned online from the stream.

    Each round first counts every (previous token -> token) transition and token, then predicts
    from the counts of each user's current token, or from popularity when that token was never
    followed by anything. Returns at most k actions.
    """

    version = "markov-online"

    def __init__(self, *, window_size: int = 200, window_span_s: float = 365 * 86_400.0) -> None:
        self.window_size, self.window_span_s = window_size, window_span_s
        self._transitions: dict[str, Counter[str]] = defaultdict(Counter)
        self._popularity: Counter[str] = Counter()

    def predict(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[list[tuple[str, float]]]:
        _check_round(states, events, k)
        for state, event in zip(states, events):
            if state.window:
                self._transitions[state.window[-1].token][event.token] += 1
            self._popularity[event.token] += 1
            update_window(state, event, window_size=self.window_size, window_span_s=self.window_span_s)
            state.hidden, state.model_version = None, self.version
        popular = self._most_common(self._popularity, k)
        return [self._most_common(self._transitions[e.token], k) if e.token in self._transitions else popular
                for e in events]

    def predict_many(self, states: list[UserState], sequences: list[list[ActionEvent]],
                     k: int) -> list[list[EventPrediction]]:
        return predict_in_rounds(self, states, sequences, k)

    def _most_common(self, counts: Counter[str], k: int) -> list[tuple[str, float]]:
        """Top k of ``counts`` as probabilities; ties by popularity, then token."""
        total = sum(counts.values())
        if total == 0:
            return []
        top = heapq.nsmallest(k, counts.items(), key=lambda kv: (-kv[1], -self._popularity[kv[0]], kv[0]))
        return [(token, count / total) for token, count in top]


def _in_time_order(state: UserState, events: list[ActionEvent]) -> bool:
    """Whether the stored window, the latest event time and the new events never go back in time."""
    ts = [e.ts_ms for e in events]
    if state.last_ts_ms is not None and ts[0] < state.last_ts_ms:
        return False  # (every window event is at most last_ts_ms)
    if any(later < earlier for earlier, later in zip(ts, ts[1:])):
        return False
    window_ts = state._encoded.ts_ms if state._encoded is not None else ()
    return len(window_ts) < 2 or bool((window_ts[1:] >= window_ts[:-1]).all())


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
