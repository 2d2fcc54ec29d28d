"""User events -> per-user state -> next-action predictions, one batch at a time.

Each batch is grouped by user; one batched model call advances every user by all of their new
events. Late events (older than the user's last event by more than the grace period) do not
change state: they get the user's current prediction, marked ``late``. A re-delivered event (same
event id as the user's latest) gets the identical prediction again.

State is written behind: users changed since the last :meth:`BehaviorPipeline.flush` are kept
decoded in memory (the truth for them is here, not yet in the store) and written to the store
once at the next flush, which the transport calls just before it commits the input offsets, as a
Kafka Streams record cache does. The store and the committed offsets therefore describe the same
events, and a busy user costs one state write per commit instead of one per batch.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import starmap
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from models.next_action.anomaly import (
    BehaviorAlert,
    BehaviorAnomalyConfig,
    BehaviorAnomalyScorer,
    PopulationSurprisal,
    SurpriseState,
)
from models.next_action.fallback import MarkovPredictor
from models.next_action.serving import ActionEvent, EventPrediction, NextActionPredictor, UserState
from schemas import ActionScore, AnomalyAlert, NextActionPrediction, UserEvent, encode
from stream_app.metrics import Metrics, observe_many
from stream_app.models_holder import HotModel
from stream_app.pipelines.base import Received, Record, StateStore, epoch_ms
from stream_app.pipelines.cells import cell_batches
from stream_app.settings import Settings
from stream_app.state import RECENT_IDS, StoredUser, decode_user, encode_user

__all__ = ["BehaviorPipeline", "BehaviorOutputs", "LoadedUser", "UserPlan", "BatchCounts", "SCORED_K"]

log = logging.getLogger(__name__)

PIPELINE = "behavior"
SCORED_K = (1, 5, 10)

_prediction_decoder = msgspec.json.Decoder(NextActionPrediction)
_encode = msgspec.json.Encoder().encode  # what schemas.encode does, without the call in between
_first = itemgetter(0)
_action = attrgetter("action")


@dataclass
class BehaviorOutputs:
    """What one batch produced: records per output topic, and what is needed once they are sent."""

    predictions: list[Record] = field(default_factory=list)
    cell_events: list[Record] = field(default_factory=list)
    alerts: list[Record] = field(default_factory=list)  # behavior anomaly alerts, keyed by user
    ingested: list[float] = field(default_factory=list)  # Kafka timestamps (s) of the events predicted
    processed: int = 0  # valid events handled


@dataclass
class LoadedUser:
    """A user's stored envelope and its decoded model state, as used during one batch."""

    stored: StoredUser
    state: UserState | None = None  # decoded on first use
    raw: bytes | None = None  # the store value it came from (None once changed)
    last_top: list[str] | None = None  # the actions of stored.last_prediction, once known

    def model_state(self) -> UserState:
        if self.state is None:
            self.state = self.stored.user_state() or UserState()
        return self.state

    def encode(self) -> bytes:
        """The store value (the model state re-encoded when it was decoded, i.e. may have changed)."""
        if self.state is not None:
            self.stored.model = self.state.to_bytes()
        self.raw = encode_user(self.stored)
        return self.raw


class BatchCounts:
    """Duplicates, late events and online quality of one batch: counted here, exported once.

    Online quality: did each user's previous prediction hold the action that just happened?
    """

    def __init__(self) -> None:
        self.duplicates = self.late = self.scored = 0
        self.hits = dict.fromkeys(SCORED_K, 0)

    def score(self, previous: list[str] | None, actual: str) -> None:
        if previous is None:
            return
        self.scored += 1
        if actual not in previous:
            return
        rank = previous.index(actual)  # ``actual in previous[:k]`` exactly when its first place is below k
        for k in SCORED_K:
            if rank < k:
                self.hits[k] += 1


class UserPlan:
    """One user's events of a batch, in order. Each is either applied (it advances the state and
    gets a new prediction), a re-delivery of the latest applied event (the identical bytes
    again), late (the latest prediction, marked late) or an older duplicate (nothing). The
    decision for each event depends on the ones before it, exactly as if they came one by one."""

    def __init__(self, user_id: str, user: LoadedUser, *, grace_ms: float, counts: BatchCounts,
                 action_token: Callable[[UserEvent], str]) -> None:
        self.user_id, self.key, self.user = user_id, user_id.encode(), user
        self.grace_ms, self.counts, self.action_token = grace_ms, counts, action_token
        stored = user.stored
        self.recent_ids, self.last_ts_ms = list(stored.recent_ids), stored.last_ts_ms
        self._had_prediction = bool(stored.last_prediction)
        self.applied: list[tuple[UserEvent, int]] = []  # (event, ingested_at ms)
        self._actions: list[ActionEvent] = []  # what the model gets of each applied event (its token and time)
        self._steps: list[tuple[str, UserEvent, int]] = []  # (kind, event, applied index before)
        self._values: list[bytes] = []  # encoded prediction of each applied event
        self.alerts: list[Record] = []  # behavior anomaly alerts raised by the applied events

    def add(self, event: UserEvent, ingested_at_ms: int) -> None:
        applied, recent_ids = self.applied, self.recent_ids
        has_prediction = self._had_prediction or bool(applied)
        latest, ts, event_id = len(applied) - 1, epoch_ms(event.ts), event.event_id
        if has_prediction and recent_ids and event_id == recent_ids[-1]:
            self.counts.duplicates += 1
            self._steps.append(("again", event, latest))
        elif event_id in recent_ids:
            self.counts.duplicates += 1
        elif has_prediction and ts < self.last_ts_ms - self.grace_ms:
            self.counts.late += 1
            self._steps.append(("late", event, latest))
        else:
            applied.append((event, ingested_at_ms))
            self._actions.append(ActionEvent(self.action_token(event), ts, event.lat, event.lon))
            self._steps.append(("applied", event, latest + 1))
            recent_ids.append(event_id)  # (a copy of the stored list: changed in place)
            if len(recent_ids) > RECENT_IDS:
                del recent_ids[:-RECENT_IDS]
            if ts > self.last_ts_ms:
                self.last_ts_ms = ts

    def actions(self) -> list[ActionEvent]:
        return self._actions

    def predicted(self, predicted: list[EventPrediction], version: str, processed_at: int) -> None:
        """Build and encode the prediction of every applied event; score the one before each."""
        previous = self._stored_top()
        score, values = self.counts.score, self._values
        for (event, ingested_at), action, result in zip(self.applied, self._actions, predicted, strict=True):
            score(previous, action.token)
            ts, top = action.ts_ms, result.top
            prediction = NextActionPrediction(
                event_id=event.event_id, user_id=event.user_id, as_of=ts, top_k=list(starmap(ActionScore, top)),
                model_version=version, window_events=result.window_events, window_span_s=result.window_span_s,
                event_ts=ts, ingested_at=ingested_at, processed_at=processed_at)
            values.append(_encode(prediction))
            previous = list(map(_first, top))
        self.user.last_top = previous

    def score_surprisal(self, predicted: list[EventPrediction], scorer: BehaviorAnomalyScorer) -> None:
        """Fold each applied event's surprisal (under the prediction before it) into the user's
        running surprisal state; an alert for every run of improbable actions it completes."""
        state = self.user.model_state()
        if state.surprise is None:
            state.surprise = SurpriseState()
        surprise = state.surprise
        for (event, _), action, result in zip(self.applied, self._actions, predicted, strict=True):
            if result.surprisal is None:
                continue  # a user's first event, or a predictor that gives no surprisal
            alert = scorer.score(surprise, action.token, action.ts_ms, result.surprisal)
            if alert is not None:
                self.alerts.append((self.key, encode(behavior_alert(self.user_id, event.event_id, alert))))

    def outputs(self, now_ms: Callable[[], int]) -> list[Record]:
        """(key, value) of every output, in the order of the user's events (``now_ms`` stamps late ones)."""
        key, values = self.key, self._values
        if len(self._steps) == len(values):  # every event applied (no re-delivery, no late one): the usual case
            return [(key, value) for value in values]
        out = []
        for kind, event, index in self._steps:
            if kind != "late":  # applied, or again
                out.append((key, values[index] if index >= 0 else self.user.stored.last_prediction))
            else:  # the latest prediction (decoded: the same values, as JSON floats round-trip), marked late
                latest = _prediction_decoder.decode(values[index] if index >= 0 else self.user.stored.last_prediction)
                late = msgspec.structs.replace(latest, event_id=event.event_id, as_of=event.ts, event_ts=event.ts,
                                               processed_at=now_ms(), late=True)
                out.append((key, encode(late)))
        return out

    def update_stored(self) -> None:
        """Record the batch in the user's envelope (call once the predictions are in); the model
        state itself is encoded when the user is written to the store."""
        stored = self.user.stored
        stored.last_prediction = self._values[-1]
        stored.recent_ids, stored.last_ts_ms = self.recent_ids, self.last_ts_ms

    def _stored_top(self) -> list[str] | None:
        last, user = self.user.stored.last_prediction, self.user
        if user.last_top is None and last:
            user.last_top = [score.action for score in _prediction_decoder.decode(last).top_k]
        return user.last_top


class BehaviorPipeline:
    """Next-action predictions for batches of user events, over a store of per-user state.

    ``process`` turns a batch into its outputs (predictions, cell events); ``emitted`` records
    what was sent; ``flush`` writes the users changed since the last flush to the store;
    ``expire_idle`` deletes users idle in event time. ``model`` is read once per batch, so a hot
    reload lands between batches.
    """

    def __init__(self, settings: Settings, store: StateStore, model: HotModel[NextActionPredictor], metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.store, self.model, self.metrics, self.clock = settings, store, model, metrics, clock
        self.grace_ms = settings.grace_s * 1000
        # Decoded states of recently active users: reused while the store still holds the very bytes
        # they were decoded from, so a hot user's window is not decoded and re-encoded every batch.
        self.hot: OrderedDict[str, LoadedUser] = OrderedDict()
        # Users changed since the last flush: the truth for them is here, not (yet) in the store.
        self.dirty: dict[str, LoadedUser] = {}
        # Largest event time seen: the clock that idle-state expiry runs on.
        self.latest_event_ms = 0
        # Behavior anomaly scoring: thresholds from the settings, the population's surprisal from the
        # serving checkpoint (rebuilt when the model changes).
        self.alert_config = BehaviorAnomalyConfig(threshold=settings.behavior_alert_threshold,
                                                  reference=settings.behavior_alert_reference,
                                                  min_gap_s=settings.behavior_alert_min_gap_s)
        self._scorer: tuple[object, BehaviorAnomalyScorer] | None = None
        self._fallback_quiet_logged = False
        self._bind_metrics(metrics, settings.topic("next-action-predictions"))

    def _bind_metrics(self, metrics: Metrics, predictions_topic: str) -> None:
        """The series this pipeline updates, looked up once (never per record or batch)."""
        self._batch_size = metrics.batch_size.labels(pipeline=PIPELINE)
        self._inference = metrics.inference_latency.labels(pipeline=PIPELINE)
        self._end_to_end = metrics.end_to_end_latency.labels(pipeline=PIPELINE)
        self._processed = metrics.events_processed.labels(pipeline=PIPELINE)
        self._last_processed = metrics.last_processed.labels(pipeline=PIPELINE)
        self._outputs = metrics.outputs.labels(topic=predictions_topic)
        self._alert_outputs = metrics.outputs.labels(topic=self.settings.topic("anomaly-alerts"))
        self._alerts = metrics.anomaly_alerts.labels(kind="behavior")
        self._duplicates = metrics.duplicates.labels(pipeline=PIPELINE)
        self._late = metrics.late_events.labels(pipeline=PIPELINE)
        self._hits = {k: metrics.online_hits.labels(k=str(k)) for k in SCORED_K}
        self._expired = metrics.state_expired.labels(table="user-state")
        self._state_bytes = metrics.state_bytes.labels(table="user-state")

    def action_token(self, event: UserEvent) -> str:
        """The token the model predicts (settings.action_field), falling back to the action."""
        return getattr(event, self.settings.action_field, None) or event.action

    def _token_of(self) -> Callable[[UserEvent], str]:
        """``action_token`` for this batch: the action itself when that is the field (the same token)."""
        return _action if self.settings.action_field == "action" else self.action_token

    def process(self, batch: Sequence[Received[UserEvent]], cell_partitions: int) -> BehaviorOutputs:
        """The outputs of one batch of valid events (``cell_partitions``: partitions of ``cell-events``)."""
        if not batch:
            return BehaviorOutputs()
        if self.settings.behavior_mode == "passthrough":  # validate only (benchmarks)
            return BehaviorOutputs(processed=len(batch))
        predictor = self.model.current  # one model per batch: a hot reload lands between batches
        self._batch_size.observe(len(batch))
        counts = BatchCounts()
        plans = self._plan(batch, counts)
        applying = [plan for plan in plans.values() if plan.applied]
        if applying:
            started = time.perf_counter()
            results = predictor.predict_many([plan.user.model_state() for plan in applying],
                                             [plan.actions() for plan in applying], self.settings.top_k)
            self._inference.observe(time.perf_counter() - started)
            processed_at = self._now_ms()
            scorer = self.anomaly_scorer(predictor)
            for plan, predicted in zip(applying, results, strict=True):
                plan.predicted(predicted, predictor.version, processed_at)
                if scorer is not None:
                    plan.score_surprisal(predicted, scorer)
        self._export(counts)
        outputs = BehaviorOutputs(ingested=[r.timestamp for r in batch], processed=len(batch))
        for user_id, plan in plans.items():
            outputs.predictions.extend(plan.outputs(self._now_ms))
            outputs.alerts.extend(plan.alerts)
            if plan.applied:
                plan.update_stored()
                self.dirty[user_id] = plan.user
            self._remember(user_id, plan.user)
        outputs.cell_events = list(cell_batches(batch, cell_partitions,
                                                self.settings.h3_resolution))
        return outputs

    def emitted(self, outputs: BehaviorOutputs, *, count_outputs: bool = True) -> None:
        """Record a batch whose outputs were handed to the producer: latency, outputs, events
        (``count_outputs=False`` when the transport counts what it writes itself)."""
        now_s = self.clock()
        observe_many(self._end_to_end, [max(0.0, now_s - ingested) for ingested in outputs.ingested])
        if outputs.predictions and count_outputs:
            self._outputs.inc(len(outputs.predictions))
        if outputs.alerts:
            self._alerts.inc(len(outputs.alerts))
            if count_outputs:
                self._alert_outputs.inc(len(outputs.alerts))
        self._processed.inc(outputs.processed)
        self._last_processed.set(now_s)  # with the counter: benchmarks time batches by it

    def anomaly_scorer(self, predictor: NextActionPredictor) -> BehaviorAnomalyScorer | None:
        """The behavior anomaly scorer for ``predictor`` (None when alerts are off): the population's
        surprisal comes from its checkpoint's metadata, a neutral guess without one (online Markov)."""
        if not self.settings.behavior_alerts:
            return None
        if isinstance(predictor, MarkovPredictor):
            # Its per-user surprisal barely separates an intruder from the user (1.3 nats against a
            # spread of 1.6): 3.7 % of clean users a day alerted and no takeover did. Off, and said once.
            if not self._fallback_quiet_logged:
                self._fallback_quiet_logged = True
                log.warning("behavior alerts are off while the fallback predictor serves (%s): they need a "
                            "trained checkpoint (STREAM_APP_CHECKPOINT)", predictor.version)
            return None
        if self._scorer is None or self._scorer[0] is not predictor:
            metadata = getattr(predictor, "metadata", None) or {}
            population = PopulationSurprisal.from_metadata(metadata.get("surprisal"))
            self._scorer = (predictor, BehaviorAnomalyScorer(population, self.alert_config))
        return self._scorer[1]

    def forget(self, belongs: Callable[[bytes], bool]) -> int:
        """Drop cached and unflushed users whose key ``belongs`` to partitions whose stores were
        reloaded or given up: the store is the truth for them again. Returns how many were dirty."""
        dropped = [user_id for user_id in self.dirty if belongs(user_id.encode())]
        for user_id in dropped:
            del self.dirty[user_id]
        for user_id in [u for u in self.hot if belongs(u.encode())]:
            del self.hot[user_id]
        return len(dropped)

    def flush(self) -> int:
        """Write every user changed since the last flush to the store (one write each); how many."""
        for user_id, user in self.dirty.items():
            self.store[user_id.encode()] = user.encode()
        written = len(self.dirty)
        self.dirty.clear()
        return written

    def expire_idle(self) -> int:
        """Delete users idle (in event time) for longer than the TTL; refresh the state gauges.
        Returns how many were deleted."""
        horizon = self.latest_event_ms - self.settings.state_ttl_s * 1000
        active = size = expired = 0
        for key, raw in list(self.store.items()):
            if key.decode() in self.dirty:
                continue  # active since the last flush
            if decode_user(raw).last_ts_ms < horizon:
                del self.store[key]
                expired += 1
            else:
                active, size = active + 1, size + len(raw)
        if expired:
            self._expired.inc(expired)
        self.metrics.active_users.set(active)
        self._state_bytes.set(size)
        return expired

    def user_summary(self, user_id: str) -> dict[str, Any] | None:
        """What the query API shows of one user (None when this store does not know it)."""
        dirty = self.dirty.get(user_id)
        state: UserState | None
        if dirty is not None:
            stored, state = dirty.stored, dirty.model_state()
        else:
            raw = self.store.get(user_id.encode())
            if not raw:
                return None
            stored = decode_user(raw)
            state = stored.user_state()
        latest = msgspec.json.decode(stored.last_prediction) if stored.last_prediction else None
        return {"user_id": user_id, "events_in_window": len(state.window) if state else 0,
                "window_span_s": _span_s(state) if state else 0.0, "event_count": state.event_count if state else 0,
                "last_event_ts": stored.last_ts_ms, "latest_prediction": latest}

    def _plan(self, batch: Sequence[Received[UserEvent]], counts: BatchCounts) -> dict[str, UserPlan]:
        """Each user's plan for the batch; advances ``latest_event_ms`` to the batch's largest event time."""
        plans: dict[str, UserPlan] = {}
        latest, token_of = self.latest_event_ms, self._token_of()
        for received in batch:
            event = received.value
            user_id = event.user_id
            plan = plans.get(user_id)
            if plan is None:
                plan = plans[user_id] = UserPlan(user_id, self._load(user_id), grace_ms=self.grace_ms, counts=counts,
                                                 action_token=token_of)
            plan.add(event, int(received.timestamp * 1000))
            ts = epoch_ms(event.ts)
            if ts > latest:
                latest = ts
        self.latest_event_ms = latest
        return plans

    def _export(self, counts: BatchCounts) -> None:
        if counts.duplicates:
            self._duplicates.inc(counts.duplicates)
        if counts.late:
            self._late.inc(counts.late)
        if counts.scored:
            self.metrics.online_scored.inc(counts.scored)
        for k, hits in counts.hits.items():
            if hits:
                self._hits[k].inc(hits)

    def _load(self, user_id: str) -> LoadedUser:
        if user_id in self.dirty:
            return self.dirty[user_id]
        raw = self.store.get(user_id.encode())
        hot = self.hot.get(user_id)
        if hot is not None and raw is not None and hot.raw is raw:
            return hot
        return LoadedUser(decode_user(raw), raw=raw) if raw else LoadedUser(StoredUser())

    def _remember(self, user_id: str, user: LoadedUser) -> None:
        self.hot[user_id] = user
        self.hot.move_to_end(user_id)
        while len(self.hot) > self.settings.state_cache_users:
            self.hot.popitem(last=False)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


def behavior_alert(user_id: str, event_id: str, alert: BehaviorAlert) -> AnomalyAlert:
    """The ``anomaly-alerts`` record of a behavior alert raised by event ``event_id`` (the alert id
    is derived from it, so a re-processed event yields the same alert id)."""
    critical = alert.observed - alert.user_mean >= 3 * alert.user_std
    return AnomalyAlert(alert_id=f"behavior:{user_id}:{event_id}", kind="behavior", key=user_id, ts=alert.ts_ms,
                        observed=alert.observed, expected=alert.expected, score=alert.score,
                        severity="critical" if critical else "warning", detail=alert.detail)


def _span_s(state: UserState) -> float:
    return (state.window[-1].ts_ms - state.window[0].ts_ms) / 1000 if state.window else 0.0
