"""User events -> per-user state -> next-action predictions (batched hot path).

Each micro-batch is validated and grouped by user; one batched model call advances every user by
all of their new events. Late events (older than the user's last event by more than the grace
period) do not change state: they get the user's current prediction, marked ``late``. A
re-delivered event (same event id as the user's latest) gets the identical prediction again.

State is written behind: users changed since the last offset commit are kept decoded in memory
and written to the changelogged table once, just before Faust commits the input offsets (and
flushes the producer), as a Kafka Streams record cache does. The table and the committed offsets
therefore always describe the same events, and a busy user costs one state write per commit
interval instead of one per batch.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import faust
import msgspec

from models.next_action.serving import ActionEvent, EventPrediction, GRUPredictor, MarkovPredictor, UserState
from schemas import ActionScore, NextActionPrediction, UserEvent, decode_user_event, encode
from stream_app.app import app, settings
from stream_app.ingest import validate_batch
from stream_app.metrics import METRICS
from stream_app.models_holder import HotModel
from stream_app.tables import ready_for_writes
from stream_app.sending import partition_count, send_records
from stream_app.state import RECENT_IDS, StoredUser, decode_user, encode_user
from stream_app.agents.cells import cell_batches
from stream_app.topics import cell_events, predictions, user_events

__all__ = ["behavior", "user_table", "model", "action_token", "flush_user_states"]

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
    last_top: list[str] | None = None  # the actions of stored.last_prediction, once known

    def model_state(self) -> UserState:
        if self.state is None:
            self.state = self.stored.user_state() or UserState()
        return self.state

    def encode(self) -> bytes:
        """The table value (the model state re-encoded when it was decoded, i.e. may have changed)."""
        if self.state is not None:
            self.stored.model = self.state.to_bytes()
        self.raw = encode_user(self.stored)
        return self.raw


# Decoded states of recently active users: reused while the table still holds the very bytes they
# were decoded from, so a hot user's window is not decoded and re-encoded on every batch.
_hot: OrderedDict[str, _User] = OrderedDict()
# Users changed since the last commit: the truth for them is here, not (yet) in the table.
_dirty: dict[str, _User] = {}


def flush_user_states() -> None:
    """Write every user changed since the last flush to the table (one changelog record each)."""
    for user_id, user in _dirty.items():
        user_table[user_id.encode()] = user.encode()
    _dirty.clear()


class _FlushStatesBeforeCommit(faust.Sensor):
    """Faust calls this when it starts an offset commit, before it works out which offsets are done
    and flushes the producer: every acknowledged event's state change reaches the changelog first."""

    def on_commit_initiated(self, consumer) -> None:
        flush_user_states()


app.sensors.add(_FlushStatesBeforeCommit())


@app.on_before_shutdown.connect
async def _flush_on_shutdown(app: faust.App, **kwargs) -> None:
    # Runs before the app's last producer flush; the consumer's final commit follows it.
    flush_user_states()


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
    METRICS.batch_size.labels(pipeline=PIPELINE).observe(len(valid))
    plans: dict[str, _Plan] = {}
    for kafka_event, event in valid:
        plan = plans.get(event.user_id)
        if plan is None:
            plan = plans[event.user_id] = _Plan(event.user_id, _load(event.user_id))
        plan.add(kafka_event, event)
    applying = [plan for plan in plans.values() if plan.applied]
    if applying:
        started = time.perf_counter()
        results = predictor.predict_many([plan.user.model_state() for plan in applying],
                                         [plan.actions() for plan in applying], settings.top_k)
        METRICS.inference_latency.labels(pipeline=PIPELINE).observe(time.perf_counter() - started)
        processed_at, quality = int(time.time() * 1000), _Quality()
        for plan, predicted in zip(applying, results):
            plan.predicted(predicted, predictor.version, processed_at, quality)
        quality.export()
    outputs: list[tuple[bytes, bytes]] = []
    for user_id, plan in plans.items():
        outputs.extend(plan.outputs())
        if plan.applied:
            plan.update_stored()
            _dirty[user_id] = plan.user
        _remember(user_id, plan.user)
    await send_records(predictions, outputs)
    await send_records(cell_events, cell_batches((event for _, event in valid), await partition_count(cell_events)))
    now_s, end_to_end = time.time(), METRICS.end_to_end_latency.labels(pipeline=PIPELINE)
    for event, _ in valid:
        end_to_end.observe(max(0.0, now_s - event.message.timestamp))
    METRICS.outputs.labels(topic=predictions.get_topic_name()).inc(len(outputs))
    METRICS.events_processed.labels(pipeline=PIPELINE).inc(len(valid))


def _load(user_id: str) -> _User:
    if user_id in _dirty:
        return _dirty[user_id]
    raw = user_table.get(user_id.encode())
    hot = _hot.get(user_id)
    if hot is not None and raw is not None and hot.raw is raw:
        return hot
    return _User(decode_user(raw), raw=raw) if raw else _User(StoredUser())


def _remember(user_id: str, user: _User) -> None:
    _hot[user_id] = user
    _hot.move_to_end(user_id)
    while len(_hot) > settings.state_cache_users:
        _hot.popitem(last=False)


class _Plan:
    """One user's events of a batch, in order. Each is either applied (it advances the state and
    gets a new prediction), a re-delivery of the latest applied event (the identical bytes
    again), late (the latest prediction, marked late) or an older duplicate (nothing). The
    decision for each event depends on the ones before it, exactly as if they came one by one."""

    def __init__(self, user_id: str, user: _User) -> None:
        self.user_id, self.key, self.user = user_id, user_id.encode(), user
        stored = user.stored
        self.recent_ids, self.last_ts_ms = list(stored.recent_ids), stored.last_ts_ms
        self.applied: list[tuple[UserEvent, int]] = []  # (event, ingested_at ms)
        self._steps: list[tuple[str, UserEvent | None, int]] = []  # (kind, event, applied index before)
        self._values: list[bytes] = []  # encoded prediction of each applied event
        self._structs: list[NextActionPrediction] = []

    def add(self, kafka_event, event: UserEvent) -> None:
        has_prediction = bool(self.applied or self.user.stored.last_prediction)
        latest = len(self.applied) - 1
        if has_prediction and self.recent_ids and event.event_id == self.recent_ids[-1]:
            METRICS.duplicates.labels(pipeline=PIPELINE).inc()
            self._steps.append(("again", None, latest))
        elif event.event_id in self.recent_ids:
            METRICS.duplicates.labels(pipeline=PIPELINE).inc()
        elif has_prediction and event.ts < self.last_ts_ms - settings.grace_s * 1000:
            METRICS.late_events.labels(pipeline=PIPELINE).inc()
            self._steps.append(("late", event, latest))
        else:
            self.applied.append((event, int(kafka_event.message.timestamp * 1000)))
            self._steps.append(("applied", event, latest + 1))
            self.recent_ids = [*self.recent_ids, event.event_id][-RECENT_IDS:]
            self.last_ts_ms = max(self.last_ts_ms, event.ts)

    def actions(self) -> list[ActionEvent]:
        return [ActionEvent(token=action_token(e), ts_ms=e.ts, lat=e.lat, lon=e.lon) for e, _ in self.applied]

    def predicted(self, predicted: list[EventPrediction], version: str, processed_at: int,
                  quality: "_Quality") -> None:
        """Build and encode the prediction of every applied event; score the one before each."""
        previous = self._stored_top()
        for (event, ingested_at), result in zip(self.applied, predicted):
            quality.score(previous, action_token(event))
            prediction = NextActionPrediction(
                event_id=event.event_id, user_id=event.user_id, as_of=event.ts,
                top_k=[ActionScore(action=a, prob=p) for a, p in result.top], model_version=version,
                window_events=result.window_events, window_span_s=result.window_span_s, event_ts=event.ts,
                ingested_at=ingested_at, processed_at=processed_at)
            self._structs.append(prediction)
            self._values.append(encode(prediction))
            previous = [a for a, _ in result.top]
        self.user.last_top = previous

    def outputs(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of every output, in the order of the user's events."""
        out = []
        for kind, event, index in self._steps:
            if kind == "applied" or kind == "again":
                out.append((self.key, self._values[index] if index >= 0 else self.user.stored.last_prediction))
            else:
                latest = self._structs[index] if index >= 0 else \
                    _prediction_decoder.decode(self.user.stored.last_prediction)
                late = msgspec.structs.replace(latest, event_id=event.event_id, as_of=event.ts, event_ts=event.ts,
                                               processed_at=int(time.time() * 1000), late=True)
                out.append((self.key, encode(late)))
        return out

    def update_stored(self) -> None:
        """Record the batch in the user's envelope (call once the predictions are in); the model
        state itself is encoded when the user is written to the table."""
        stored = self.user.stored
        stored.last_prediction = self._values[-1]
        stored.recent_ids, stored.last_ts_ms = self.recent_ids, self.last_ts_ms

    def _stored_top(self) -> list[str] | None:
        last, user = self.user.stored.last_prediction, self.user
        if user.last_top is None and last:
            user.last_top = [score.action for score in _prediction_decoder.decode(last).top_k]
        return user.last_top


class _Quality:
    """Online quality of one batch: did each user's previous prediction hold the action that
    just happened (counted here, exported once per batch)?"""

    def __init__(self) -> None:
        self.scored, self.hits = 0, dict.fromkeys(SCORED_K, 0)

    def score(self, previous: list[str] | None, actual: str) -> None:
        if previous is None:
            return
        self.scored += 1
        for k in SCORED_K:
            if actual in previous[:k]:
                self.hits[k] += 1

    def export(self) -> None:
        if self.scored:
            METRICS.online_scored.inc(self.scored)
        for k, hits in self.hits.items():
            if hits:
                METRICS.online_hits.labels(k=str(k)).inc(hits)


def _span_s(state: UserState) -> float:
    return (state.window[-1].ts_ms - state.window[0].ts_ms) / 1000 if state.window else 0.0


@app.timer(2.0)
async def reload_model() -> None:
    model.refresh()


@app.timer(settings.expiry_interval_s)
async def expire_idle_users() -> None:
    """Delete users idle (in event time) for longer than the TTL; refresh the state gauges."""
    horizon = _latest_event_ms - settings.state_ttl_s * 1000
    active = size = 0
    for key, raw in list(user_table.items()):
        if key.decode() in _dirty:
            continue  # active since the last commit
        if decode_user(raw).last_ts_ms < horizon:
            del user_table[key]
            METRICS.state_expired.labels(table="user-state").inc()
        else:
            active, size = active + 1, size + len(raw)
    METRICS.active_users.set(active)
    METRICS.state_bytes.labels(table="user-state").set(size)


def user_summary(user_id: str) -> dict | None:
    """What the query API shows of one user on the worker that owns it (None when unknown)."""
    dirty = _dirty.get(user_id)
    if dirty is not None:
        stored, state = dirty.stored, dirty.model_state()
    else:
        raw = user_table.get(user_id.encode())
        if not raw:
            return None
        stored = decode_user(raw)
        state = stored.user_state()
    latest = msgspec.json.decode(stored.last_prediction) if stored.last_prediction else None
    return {"user_id": user_id, "events_in_window": len(state.window) if state else 0,
            "window_span_s": _span_s(state) if state else 0.0, "event_count": state.event_count if state else 0,
            "last_event_ts": stored.last_ts_ms, "latest_prediction": latest}
