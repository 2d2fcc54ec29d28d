"""Behavior anomaly scoring: a run of improbable actions for this user raises an alert decision.

Per event the surprisal of the observed action under the prediction made before it (-log p, from
``EventPrediction.surprisal``) is standardized against the user's own running distribution of
surprisals, shrunk towards the population's (a checkpoint's ``metadata["surprisal"]``, measured on
validation) while the user is new. A one-sided CUSUM accumulates the excess; each event adds at
most ``z_cap - reference``, so one improbable event alone never alerts: a run of them does. An
alert carries the events and probabilities of the run that caused it, resets the run and
silences the user for ``min_gap_s`` of event time. Pure: the state is a small value the caller
keeps with the user (``UserState.surprise``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.exceptions import ModelError

__all__ = ["BehaviorAnomalyConfig", "SurpriseState", "SurprisingEvent", "BehaviorAlert", "BehaviorAnomalyScorer",
           "PopulationSurprisal"]

_STATE = struct.Struct("<BIdddqB")  # version, n, mean, var, cusum, last alert ts, evidence count
_EVIDENCE = struct.Struct("<qdH")   # ts_ms, probability, token byte length
_STATE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class BehaviorAnomalyConfig:
    """Thresholds of behavior anomaly scoring (all in standard deviations of surprisal unless said).

    The defaults alert on an account taken over by someone who uses the app differently after 4 to
    7 of the intruder's events (median), and on 0 to 0.4 % of clean generated users per day
    (docs/evaluation-next-action.md).

    reference: the CUSUM's allowance per event (excess below it drains the run);
    threshold: the run's accumulated excess that raises an alert;
    z_cap: the most one event can count (so ``threshold / (z_cap - reference)`` events at least);
    prior_events: how many events the population's distribution weighs in a user's;
    memory_events: the user's distribution forgets with this time constant (events);
    min_gap_s: event time after an alert during which the user cannot alert again;
    max_evidence: events of the run an alert carries (the most recent).
    """

    reference: float = 1.0
    threshold: float = 7.0
    z_cap: float = 3.0
    prior_events: float = 30.0
    memory_events: float = 200.0
    min_gap_s: float = 3_600.0
    max_evidence: int = 8

    def __post_init__(self) -> None:
        if not (self.z_cap > self.reference >= 0 and self.threshold > 0 and self.prior_events > 0
                and self.memory_events >= 1 and self.min_gap_s >= 0 and self.max_evidence >= 1):
            raise ModelError(f"invalid BehaviorAnomalyConfig {self}: need z_cap > reference >= 0, threshold > 0, "
                             "prior_events > 0, memory_events >= 1, min_gap_s >= 0, max_evidence >= 1")


@dataclass(frozen=True)
class PopulationSurprisal:
    """Mean and standard deviation of surprisal over many users (what a new user is assumed to have)."""

    mean: float
    std: float

    @classmethod
    def from_metadata(cls, surprisal: Mapping[str, Any] | None) -> PopulationSurprisal:
        """From a checkpoint's ``metadata["surprisal"]``; a neutral guess when it is absent."""
        if not surprisal or not surprisal.get("std"):
            return cls(mean=2.0, std=1.5)
        return cls(mean=float(surprisal["mean"]), std=max(1e-3, float(surprisal["std"])))


@dataclass(frozen=True, slots=True)
class SurprisingEvent:
    """One event of a run: its action, time and the probability the prediction before it gave it."""

    token: str
    ts_ms: int
    probability: float


@dataclass
class SurpriseState:
    """A user's running surprisal distribution (count, mean, variance), the current run (CUSUM and
    its recent events) and the event time of the last alert."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    cusum: float = 0.0
    last_alert_ms: int | None = None
    run: list[SurprisingEvent] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        parts = [_STATE.pack(_STATE_VERSION, self.n, self.mean, self.var, self.cusum,
                             -1 if self.last_alert_ms is None else self.last_alert_ms, len(self.run))]
        for event in self.run:
            token = event.token.encode("utf-8")[:0xFFFF]
            parts += [_EVIDENCE.pack(event.ts_ms, event.probability, len(token)), token]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> SurpriseState:
        try:
            version, n, mean, var, cusum, last, count = _STATE.unpack_from(data)
            if version != _STATE_VERSION:
                raise ModelError(f"surprise state has format {version}, this version reads {_STATE_VERSION}")
            offset, run = _STATE.size, []
            for _ in range(count):
                ts, p, length = _EVIDENCE.unpack_from(data, offset)
                offset += _EVIDENCE.size
                run.append(SurprisingEvent(data[offset:offset + length].decode("utf-8"), ts, p))
                offset += length
        except (struct.error, UnicodeDecodeError) as exc:
            raise ModelError(f"surprise state is corrupt ({len(data)} bytes): {exc}") from exc
        if offset != len(data):
            raise ModelError(f"surprise state is corrupt: {len(data) - offset} trailing bytes")
        return cls(n, mean, var, cusum, None if last < 0 else last, run)


@dataclass(frozen=True)
class BehaviorAlert:
    """An alert decision for one user: when, how far the run went (``score``, the CUSUM, against
    ``threshold``), the events of the run with the probability each was given, and the user's
    expected surprisal (mean and standard deviation, nats) it was measured against."""

    ts_ms: int
    score: float
    threshold: float
    events: tuple[SurprisingEvent, ...]
    user_mean: float
    user_std: float

    @property
    def observed(self) -> float:
        """Mean surprisal of the run's events (nats)."""
        return sum(-math.log(max(e.probability, 1e-12)) for e in self.events) / max(1, len(self.events))

    @property
    def expected(self) -> float:
        return self.user_mean

    @property
    def detail(self) -> str:
        listed = ", ".join(f"{e.token} (p={e.probability:.2g})" for e in self.events)
        return (f"{len(self.events)} improbable actions in a row: {listed}; this user's surprisal is usually "
                f"{self.user_mean:.2f} ± {self.user_std:.2f} nats")


class BehaviorAnomalyScorer:
    """Scores each user's events one after another (see the module doc)."""

    def __init__(self, population: PopulationSurprisal, config: BehaviorAnomalyConfig = BehaviorAnomalyConfig()
                 ) -> None:
        self.population, self.config = population, config

    def expected(self, state: SurpriseState) -> tuple[float, float]:
        """The mean and standard deviation of surprisal this user is expected to show."""
        prior, pop = self.config.prior_events, self.population
        weight = state.n / (state.n + prior)
        mean = weight * state.mean + (1 - weight) * pop.mean
        var = weight * (state.var + (state.mean - mean) ** 2) + (1 - weight) * (pop.std ** 2 + (pop.mean - mean) ** 2)
        return mean, math.sqrt(max(var, 1e-6))

    def score(self, state: SurpriseState, token: str, ts_ms: int, surprisal: float) -> BehaviorAlert | None:
        """Fold one event (its surprisal in nats) into ``state`` (in place); an alert decision when
        it completes an improbable run outside the user's silence period."""
        # ``expected`` and ``_learn`` written out (the same arithmetic in the same order): this runs per event.
        config, pop = self.config, self.population
        if not math.isfinite(surprisal):
            surprisal = -math.log(1e-12)
        n, user_mean, user_var = state.n, state.mean, state.var
        weight = n / (n + config.prior_events)
        mean = weight * user_mean + (1 - weight) * pop.mean
        var = weight * (user_var + (user_mean - mean) ** 2) + (1 - weight) * (pop.std ** 2 + (pop.mean - mean) ** 2)
        std = math.sqrt(max(var, 1e-6))
        z = min(config.z_cap, (surprisal - mean) / std)
        cusum = state.cusum = max(0.0, state.cusum + z - config.reference)
        if cusum > 0:
            run = state.run
            run.append(SurprisingEvent(token, ts_ms, math.exp(-surprisal)))
            if len(run) > config.max_evidence:
                del run[:-config.max_evidence]
        elif state.run:
            state.run = []
        n += 1
        rate = 1.0 / min(n, config.memory_events)
        delta = surprisal - user_mean
        state.n, state.mean = n, user_mean + rate * delta
        state.var = (1 - rate) * (user_var + rate * delta * delta)
        if cusum < config.threshold:
            return None
        silent = state.last_alert_ms is not None and ts_ms - state.last_alert_ms < config.min_gap_s * 1000
        alert = None if silent else BehaviorAlert(ts_ms, cusum, config.threshold, tuple(state.run), mean, std)
        state.cusum, state.run = 0.0, []
        if alert is not None:
            state.last_alert_ms = ts_ms
        return alert

    def score_many(self, state: SurpriseState, events: Sequence[tuple[str, int, float | None]]
                   ) -> list[BehaviorAlert]:
        """``score`` over (token, ts_ms, surprisal) in order; events without a surprisal (a user's
        first event) are skipped."""
        alerts = []
        for token, ts_ms, surprisal in events:
            if surprisal is not None:
                alert = self.score(state, token, ts_ms, surprisal)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _learn(self, state: SurpriseState, surprisal: float) -> None:
        """Exponentially weighted mean and variance (Welford's update while young)."""
        state.n += 1
        rate = 1.0 / min(state.n, self.config.memory_events)
        delta = surprisal - state.mean
        state.mean += rate * delta
        state.var = (1 - rate) * (state.var + rate * delta * delta)
