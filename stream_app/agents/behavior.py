"""User events -> per-user state -> next-action predictions (batched hot path).

Each micro-batch is validated, split into rounds (a user's k-th event goes in round k), and each
round is one batched model step over distinct users. A user's state is read once and written once
per batch. Late events (older than the user's last event by more than the grace period) do not
change state: they get the user's current prediction, marked ``late``. A re-delivered event (same
event id as the user's latest) gets the identical prediction again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import msgspec

from models.serving import ActionEvent, GRUPredictor, MarkovPredictor, UserState
from schemas import ActionScore, NextActionPrediction, UserEvent, decode_user_event, encode
from stream_app.app import app, settings
from stream_app.batching import group_into_rounds
from stream_app.ingest import validate_batch
from stream_app.metrics import METRICS
from stream_app.models_holder import HotModel
from stream_app.tables import ready_for_writes
from stream_app.state import RECENT_IDS, StoredUser, decode_user, encode_user
from stream_app.agents.cells import cell_batches
from stream_app.topics import cell_events, predictions, user_events

__all__ = ["behavior", "user_table", "model", "action_token"]

log = logging.getLogger(__name__)

PIPELINE = "behavior"
SCORED_K = (1, 5, 10)

# use_partitioner: table writes inside take_events() have no single "current" event (Faust #497),
# so the changelog partition is computed from the key, which is the input topic's key.
user_table = app.Table("user-state", default=None, key_type=bytes, value_type=bytes,
                       partitions=settings.partitions, use_partitioner=True)

model: HotModel = HotModel(
    PIPELINE, settings.checkpoint, load=lambda path: GRUPredictor.from_checkpoint(path),
    fallback=MarkovPredictor(window_size=settings.window_events, window_span_s=settings.window_span_s))

_prediction_decoder = msgspec.json.Decoder(NextActionPrediction)
# Largest event time this worker has seen: the clock that idle-state expiry runs on.
_latest_event_ms = 0


def action_token(event: UserEvent) -> str:
    """The token the model predicts (settings.action_field), falling back to the action."""
    return getattr(event, settings.action_field, None) or event.action


@dataclass
class _User:
    """A user's table value and its decoded model state, as used during one batch."""

    stored: StoredUser
    state: UserState | None = None  # decoded on first use
    raw: bytes | None = None  # the table value it came from (None once changed)

    def model_state(self) -> UserState:
        if self.state is None:
            self.state = self.stored.user_state() or UserState()
        return self.state


# Decoded states of recently active users: reused while the table still holds the very bytes they
# were decoded from, so a hot user's window is not decoded and re-encoded on every batch.
_hot: OrderedDict[str, _User] = OrderedDict()


@app.agent(user_events)
async def behavior(stream):
    await ready_for_writes(user_table)
    async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
        valid = await validate_batch(batch, decode_user_event)
        if not valid:
            continue
        if settings.behavior_mode == "passthrough":
            METRICS.events_processed.labels(pipeline=PIPELINE).inc(len(valid))
        elif settings.behavior_mode == "unbatched":
            for pair in valid:
                await _process([pair])
        else:
            await _process(valid)


async def _process(valid: list) -> None:
    global _latest_event_ms
    _latest_event_ms = max(_latest_event_ms, max(event.ts for _, event in valid))
    predictor = model.current  # one model per batch: a hot reload lands between batches
    users: dict[str, _User] = {}
    outputs: list[tuple[bytes, bytes]] = []
    METRICS.batch_size.labels(pipeline=PIPELINE).observe(len(valid))
    for round_ in group_into_rounds(valid, key=lambda pair: pair[1].user_id):
        outputs.extend(_apply_round(predictor, round_, users))
    for user_id, user in users.items():
        if user.raw is None:
            user.raw = encode_user(user.stored)
            user_table[user_id.encode()] = user.raw
        _remember(user_id, user)
    # send_soon: buffered, flushed by Faust before it commits the input offsets (at-least-once).
    for key, value in outputs:
        predictions.send_soon(key=key, value=value)
    for key, value in cell_batches(event for _, event in valid):
        cell_events.send_soon(key=key, value=value)
    now_s, end_to_end = time.time(), METRICS.end_to_end_latency.labels(pipeline=PIPELINE)
    for event, _ in valid:
        end_to_end.observe(max(0.0, now_s - event.message.timestamp))
    METRICS.outputs.labels(topic=predictions.get_topic_name()).inc(len(outputs))
    METRICS.events_processed.labels(pipeline=PIPELINE).inc(len(valid))


def _load(users: dict[str, _User], user_id: str) -> _User:
    if user_id not in users:
        raw = user_table.get(user_id.encode())
        hot = _hot.get(user_id)
        if hot is not None and raw is not None and hot.raw is raw:
            users[user_id] = hot
        else:
            users[user_id] = _User(decode_user(raw), raw=raw) if raw else _User(StoredUser())
    return users[user_id]


def _remember(user_id: str, user: _User) -> None:
    _hot[user_id] = user
    _hot.move_to_end(user_id)
    while len(_hot) > settings.state_cache_users:
        _hot.popitem(last=False)


def _apply_round(predictor, round_: list, users: dict[str, _User]) -> list[tuple[bytes, bytes]]:
    outputs: list[tuple[bytes, bytes]] = []
    to_apply: list[tuple[UserEvent, int, _User]] = []
    for kafka_event, event in round_:
        user = _load(users, event.user_id)
        ingested_at = int(kafka_event.message.timestamp * 1000)
        replay = _replayed_or_late(event, user.stored)
        if replay is not None:
            outputs.append(replay)
        elif event.event_id not in user.stored.recent_ids:
            to_apply.append((event, ingested_at, user))
        else:
            METRICS.duplicates.labels(pipeline=PIPELINE).inc()
    if to_apply:
        outputs.extend(_step(predictor, to_apply))
    return outputs


def _replayed_or_late(event: UserEvent, stored: StoredUser) -> tuple[bytes, bytes] | None:
    """The output for an event that must not change state, or None when it is to be applied."""
    key = event.user_id.encode()
    if stored.last_prediction and event.event_id == stored.recent_ids[-1]:
        METRICS.duplicates.labels(pipeline=PIPELINE).inc()
        return key, stored.last_prediction  # re-delivery: the identical prediction again
    if stored.last_prediction and event.event_id not in stored.recent_ids and \
            event.ts < stored.last_ts_ms - settings.grace_s * 1000:
        METRICS.late_events.labels(pipeline=PIPELINE).inc()
        current = _prediction_decoder.decode(stored.last_prediction)
        late = msgspec.structs.replace(current, event_id=event.event_id, as_of=event.ts, event_ts=event.ts,
                                       processed_at=int(time.time() * 1000), late=True)
        return key, encode(late)
    return None


def _step(predictor, to_apply: list[tuple[UserEvent, int, _User]]) -> list[tuple[bytes, bytes]]:
    states = [user.model_state() for _, _, user in to_apply]
    events = [ActionEvent(token=action_token(e), ts_ms=e.ts, lat=e.lat, lon=e.lon) for e, _, _ in to_apply]
    for (_, _, user), action in zip(to_apply, events):
        _score_previous(user.stored, action.token)
    started = time.perf_counter()
    top = predictor.predict(states, events, settings.top_k)
    METRICS.inference_latency.labels(pipeline=PIPELINE).observe(time.perf_counter() - started)
    outputs = []
    processed_at = int(time.time() * 1000)
    for (event, ingested_at, user), state, ranked in zip(to_apply, states, top):
        stored, user.raw = user.stored, None
        prediction = NextActionPrediction(
            event_id=event.event_id, user_id=event.user_id, as_of=event.ts,
            top_k=[ActionScore(action=a, prob=p) for a, p in ranked], model_version=predictor.version,
            window_events=len(state.window), window_span_s=_span_s(state), event_ts=event.ts,
            ingested_at=ingested_at, processed_at=processed_at)
        value = encode(prediction)
        stored.model = state.to_bytes()
        stored.last_prediction = value
        stored.recent_ids = [*stored.recent_ids, event.event_id][-RECENT_IDS:]
        stored.last_ts_ms = max(stored.last_ts_ms, event.ts)
        outputs.append((event.user_id.encode(), value))
    return outputs


def _span_s(state: UserState) -> float:
    return (state.window[-1].ts_ms - state.window[0].ts_ms) / 1000 if state.window else 0.0


def _score_previous(stored: StoredUser, actual: str) -> None:
    """Online quality: did the user's previous prediction hold the action that just happened?"""
    if not stored.last_prediction:
        return
    ranked = [score.action for score in _prediction_decoder.decode(stored.last_prediction).top_k]
    METRICS.online_scored.inc()
    for k in SCORED_K:
        if actual in ranked[:k]:
            METRICS.online_hits.labels(k=str(k)).inc()


@app.timer(2.0)
async def reload_model() -> None:
    model.refresh()


@app.timer(settings.expiry_interval_s)
async def expire_idle_users() -> None:
    """Delete users idle (in event time) for longer than the TTL; refresh the state gauges."""
    horizon = _latest_event_ms - settings.state_ttl_s * 1000
    active = size = 0
    for key, raw in list(user_table.items()):
        if decode_user(raw).last_ts_ms < horizon:
            del user_table[key]
            METRICS.state_expired.labels(table="user-state").inc()
        else:
            active, size = active + 1, size + len(raw)
    METRICS.active_users.set(active)
    METRICS.state_bytes.labels(table="user-state").set(size)


def user_summary(user_id: str) -> dict | None:
    """What the query API shows of one user on the worker that owns it (None when unknown)."""
    raw = user_table.get(user_id.encode())
    if not raw:
        return None
    stored = decode_user(raw)
    state = stored.user_state()
    latest = msgspec.json.decode(stored.last_prediction) if stored.last_prediction else None
    return {"user_id": user_id, "events_in_window": len(state.window) if state else 0,
            "window_span_s": _span_s(state) if state else 0.0, "event_count": state.event_count if state else 0,
            "last_event_ts": stored.last_ts_ms, "latest_prediction": latest}
