"""Incidents: a sensor departing from its expected value, raised once, grouped with its neighbours,
resolved when every member is back. Pure numpy; the caller feeds one window at a time.

Score. Per window and sensor ``z = residual / scale``. The residual is ``observed - expected``,
``expected`` being what the sensor normally reads then (the seasonal profile, or a forecast). For
counts it is the count likelihood instead: the Poisson (mean ``expected``) mid-p probability of
the observed count, as a standard normal quantile, so a quiet stop's 0 against an expected 2 is
exactly as alarming as it is unlikely, whatever the level. ``scale`` is the typical size of the
residual at that time of day (:class:`ResidualScale`: the RMS of training residuals per
time-of-day slot, shrunk towards the sensor's overall RMS, so it follows the profile: rush hours
get wider bands than quiet nights; about 1 for counts that are Poisson, more when overdispersed).
A sensor whose expected value rests on fewer than ``min_history`` periods of history is not
scored (no alerts from a profile that has not seen the slot yet).

State machine per sensor. It *departs* after ``depart_windows`` windows in a row beyond
``threshold`` (in ``direction``: below for speeds, where incidents are drops; above or both for
counts) and *returns* after ``return_windows`` windows in a row within ``release * threshold``
(at least one standard deviation).
A departing sensor next to a sensor of an open incident joins that incident; otherwise it raises
a new one (one ``raised`` event). An incident is ``resolved`` (one event) when its last member
returns. Missing observations leave the counters as they are.

Threshold. :func:`calibrate_threshold` picks the smallest threshold whose replay over validation
scores raises no more than the alert budget (``budget_per_sensor_week`` incidents per sensor and
week of validation data), never below ``min_threshold`` (2.5 standard deviations): on well-behaved
residuals the budget is a cap that is not reached, on heavy-tailed ones it decides.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch

from models.exceptions import ModelError
from models.traffic.calendar import DAY_MS, WEEK_MS

__all__ = ["IncidentConfig", "IncidentEvent", "IncidentDetector", "ResidualScale", "z_scores", "residuals",
           "calibrate_threshold", "neighbour_lists", "RAISED", "RESOLVED"]

logger = logging.getLogger(__name__)

RAISED, RESOLVED = "raised", "resolved"
_MIN_RELEASE_Z = 1.0
_MIN_COUNT_MEAN = 1e-3  # an expected count of 0 would make any count impossible
_TAIL = 1e-12  # a sensor is back once within one standard deviation, even under a low threshold
_DIRECTIONS = ("below", "above", "both")


@dataclass(frozen=True, kw_only=True)
class IncidentConfig:
    """Thresholds, run lengths and the alert budget of :class:`IncidentDetector`."""

    threshold: float = 4.0  # |z| beyond which a window counts as departed (calibrate it)
    release: float = 0.5  # a window counts as returned within release * threshold (at least 1)
    depart_windows: int = 2
    return_windows: int = 3
    direction: str = "below"
    min_history: float = 2.0  # periods (days or weeks) of history behind ``expected`` before scoring
    budget_per_sensor_week: float = 1.0  # incidents allowed per sensor and week of validation data
    min_threshold: float = 2.5  # calibration never goes below it: the budget is a cap, not a target
    critical_factor: float = 2.0  # |z| above critical_factor * threshold: severity critical
    counts: bool = False  # score counts by their Poisson likelihood

    def __post_init__(self) -> None:
        problems = []
        if not self.threshold > 0 or not 0 < self.release <= 1:
            problems.append("need threshold > 0 and 0 < release <= 1")
        if self.depart_windows < 1 or self.return_windows < 1:
            problems.append("need depart_windows >= 1 and return_windows >= 1")
        if self.direction not in _DIRECTIONS:
            problems.append(f"direction must be one of {_DIRECTIONS}")
        if self.budget_per_sensor_week <= 0 or self.critical_factor < 1 or self.min_history < 0:
            problems.append("need budget_per_sensor_week > 0, critical_factor >= 1, min_history >= 0")
        if problems:
            raise ModelError("invalid IncidentConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class IncidentEvent:
    """An incident raised (its first sensor departed) or resolved (its last member returned).

    ``sensor_id``: the sensor that raised it (resolved: the last to return); ``sensors``: every
    sensor grouped into it so far; ``score``: z of ``sensor_id`` in this window.
    """

    status: str
    incident_id: str
    sensor_id: str
    sensors: tuple[str, ...]
    window_end_ms: int
    started_ms: int
    observed: float
    expected: float
    score: float
    severity: str


def residuals(observed: npt.ArrayLike, expected: npt.ArrayLike, counts: bool = False) -> npt.NDArray[np.float64]:
    """``observed - expected``, or for counts the Poisson mid-p quantile of the observation (module doc)."""
    observed, expected = np.asarray(observed, np.float64), np.asarray(expected, np.float64)
    if not counts:
        difference: npt.NDArray[np.float64] = observed - expected
        return difference
    x = torch.from_numpy(np.round(np.nan_to_num(np.maximum(observed, 0.0))))
    mean = torch.from_numpy(np.maximum(np.nan_to_num(expected), _MIN_COUNT_MEAN))
    at_most = torch.special.gammaincc(x + 1, mean)  # P(X <= x)
    below = torch.where(x > 0, torch.special.gammaincc(x.clamp(min=1), mean), torch.zeros_like(mean))
    middle = ((at_most + below) / 2).clamp(_TAIL, 1 - _TAIL)
    z = torch.special.ndtri(middle).numpy()
    quantile_z: npt.NDArray[np.float64] = np.where(np.isfinite(observed) & np.isfinite(expected), z, np.nan)
    return quantile_z


@dataclass(eq=False)
class ResidualScale:
    """RMS residual per time-of-day slot and sensor, shrunk towards the sensor's RMS (module doc)."""

    slot_ms: int
    table: np.ndarray  # [slots per day, sensors]

    @classmethod
    def fit(cls, residual: np.ndarray, mask: np.ndarray, local_ms: np.ndarray, slot_ms: int, *,
            shrinkage: float = 8.0, minimum: float = 0.0) -> ResidualScale:
        """From residuals [time, sensors] (:func:`residuals`; only where ``mask``) at rows ``local_ms``
        [time]; ``minimum``: 1 for count likelihoods, already in standard units (their discreteness
        makes the measured RMS fall below 1 at low counts; only overdispersion should widen them)."""
        if DAY_MS % slot_ms:
            raise ModelError(f"slots of {slot_ms} ms do not divide a day")
        residuals = np.where(mask, np.nan_to_num(residual), 0.0)
        slots = (np.asarray(local_ms, dtype=np.int64) % DAY_MS) // slot_ms
        n_slots = DAY_MS // slot_ms
        sums = np.zeros((n_slots, residuals.shape[1]))
        counts_ = np.zeros_like(sums)
        np.add.at(sums, slots, np.square(residuals))
        np.add.at(counts_, slots, mask.astype(np.float64))
        overall = sums.sum(axis=0) / np.maximum(counts_.sum(axis=0), 1)
        pooled = float(np.sqrt(overall[counts_.sum(axis=0) > 0].mean())) if (counts_.sum(axis=0) > 0).any() else 1.0
        overall = np.where(counts_.sum(axis=0) > 0, overall, pooled ** 2)
        shrunk = (sums + shrinkage * overall) / (counts_ + shrinkage)
        floor = np.maximum(0.1 * np.sqrt(overall), 1e-6 * max(pooled, 1e-6))
        return cls(slot_ms, np.maximum(np.maximum(np.sqrt(shrunk), floor), minimum))

    def at(self, local_ms: int | np.ndarray) -> np.ndarray:
        """[..., sensors] the scale at ``local_ms`` (local wall-clock ms, [...])."""
        return self.table[(np.asarray(local_ms, dtype=np.int64) % DAY_MS) // self.slot_ms]


def z_scores(observed: np.ndarray, expected: np.ndarray, scale: np.ndarray, history: np.ndarray | None = None,
             min_history: float = 0.0, counts: bool = False) -> npt.NDArray[np.float64]:
    """residual / scale (:func:`residuals`), NaN where unobserved or where ``history`` < ``min_history``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z: npt.NDArray[np.float64] = residuals(observed, expected, counts) / scale
    if history is not None:
        z = np.where(np.asarray(history) >= min_history, z, np.nan)
    return z


def neighbour_lists(adjacency: np.ndarray) -> list[np.ndarray]:
    """Per sensor, the indices of the sensors linked to it either way (not itself)."""
    linked = (np.asarray(adjacency) != 0) | (np.asarray(adjacency) != 0).T
    np.fill_diagonal(linked, False)
    return [np.flatnonzero(row) for row in linked]


class IncidentDetector:
    """The state machine of the module doc over a fixed list of sensors and their links."""

    def __init__(self, sensor_ids: Sequence[str], neighbours: Sequence[np.ndarray] | np.ndarray,
                 config: IncidentConfig = IncidentConfig(), *, name: str = "") -> None:
        self.sensor_ids = tuple(str(s) for s in sensor_ids)
        self.neighbours = neighbour_lists(neighbours) if isinstance(neighbours, np.ndarray) else list(neighbours)
        if len(self.neighbours) != len(self.sensor_ids):
            raise ModelError(f"{len(self.neighbours)} neighbour lists for {len(self.sensor_ids)} sensors")
        self.config = config
        self.name = name
        self.reset()

    def reset(self) -> None:
        """No sensor departed, no incident open."""
        n = len(self.sensor_ids)
        self._beyond = np.zeros(n, dtype=np.uint32)  # windows in a row beyond the threshold
        self._within = np.zeros(n, dtype=np.uint32)  # windows in a row back within the release band
        self._incident = np.full(n, -1, dtype=np.int64)  # open incident of each departed sensor
        self._open: dict[int, tuple[int, int]] = {}  # incident number -> (started_ms, first sensor)
        self._grouped: dict[int, list[int]] = {}  # incident number -> every sensor that joined it
        self._next = 0

    @property
    def open_incidents(self) -> int:
        return len(self._open)

    def update(self, window_end_ms: int, observed: np.ndarray, expected: np.ndarray, scale: np.ndarray,
               history: np.ndarray | None = None) -> list[IncidentEvent]:
        """Score one window ([sensors] each; NaN observed = not measured) and return its events."""
        observed, expected, scale = (self._as_values(v, name) for v, name in
                                     ((observed, "observed"), (expected, "expected"), (scale, "scale")))
        z = z_scores(observed, expected, scale, history, self.config.min_history, self.config.counts)
        return self.step(int(window_end_ms), z, observed, expected)

    def step(self, window_end_ms: int, z: np.ndarray, observed: np.ndarray | None = None,
             expected: np.ndarray | None = None) -> list[IncidentEvent]:
        """Advance on precomputed scores ``z`` [sensors] (NaN: not scored)."""
        cfg = self.config
        scored = np.isfinite(z)
        departed_now = scored & _beyond(z, cfg.threshold, cfg.direction)
        back_now = scored & ~_beyond(z, max(cfg.release * cfg.threshold, _MIN_RELEASE_Z), cfg.direction)
        self._beyond = np.where(departed_now, self._beyond + 1, np.where(scored, 0, self._beyond)).astype(np.uint32)
        self._within = np.where(back_now, self._within + 1, np.where(scored, 0, self._within)).astype(np.uint32)
        events = self._departures(window_end_ms, z, observed, expected)
        return events + self._returns(window_end_ms, z, observed, expected)

    def _departures(self, window_end_ms: int, z: np.ndarray, observed: np.ndarray | None,
                    expected: np.ndarray | None) -> list[IncidentEvent]:
        """Sensors whose run beyond the threshold just reached ``depart_windows``: join or raise."""
        starting = (self._incident < 0) & (self._beyond >= self.config.depart_windows)
        events = []
        for sensor in np.flatnonzero(starting):
            joined = next((int(self._incident[j]) for j in self.neighbours[sensor] if self._incident[j] >= 0), None)
            if joined is not None:
                self._incident[sensor] = joined
                self._grouped[joined].append(int(sensor))
                continue
            number, self._next = self._next, self._next + 1
            self._open[number] = (window_end_ms, int(sensor))
            self._grouped[number] = [int(sensor)]
            self._incident[sensor] = number
            events.append(self._event(RAISED, number, int(sensor), window_end_ms, z, observed, expected))
        return events

    def _returns(self, window_end_ms: int, z: np.ndarray, observed: np.ndarray | None,
                 expected: np.ndarray | None) -> list[IncidentEvent]:
        """Departed sensors back for ``return_windows``; an incident without members is resolved."""
        returning = (self._incident >= 0) & (self._within >= self.config.return_windows)
        events = []
        for sensor in np.flatnonzero(returning):
            number = int(self._incident[sensor])
            self._incident[sensor] = -1
            if not (self._incident == number).any():
                events.append(self._event(RESOLVED, number, int(sensor), window_end_ms, z, observed, expected))
                del self._open[number], self._grouped[number]
        return events

    def _event(self, status: str, number: int, sensor: int, window_end_ms: int, z: np.ndarray,
               observed: np.ndarray | None, expected: np.ndarray | None) -> IncidentEvent:
        started, first = self._open[number]
        score = float(z[sensor]) if np.isfinite(z[sensor]) else 0.0
        critical = abs(score) > self.config.critical_factor * self.config.threshold
        return IncidentEvent(
            status=status, incident_id=f"{self.name}:{self.sensor_ids[first]}:{started}",
            sensor_id=self.sensor_ids[sensor],
            sensors=tuple(self.sensor_ids[i] for i in self._grouped[number]), window_end_ms=window_end_ms,
            started_ms=started, observed=_at(observed, sensor), expected=_at(expected, sensor), score=score,
            severity="critical" if critical else "warning")

    def _as_values(self, values: np.ndarray, name: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(self.sensor_ids),):
            raise ModelError(f"{name} must be [{len(self.sensor_ids)}] (one per sensor), got shape {values.shape}")
        return values

    def state_bytes(self) -> bytes:
        """Compact versioned encoding of the runs and the open incidents."""
        incidents = json.dumps({str(k): [*v, self._grouped[k]] for k, v in self._open.items()}).encode()
        arrays = (self._beyond.astype("<u4"), self._within.astype("<u4"), self._incident.astype("<i8"))
        header = _HEADER.pack(_MAGIC, _FORMAT, len(self.sensor_ids), self._next, len(incidents))
        return header + b"".join(a.tobytes() for a in arrays) + incidents

    def load_state_bytes(self, data: bytes) -> None:
        """Replace the state with ``data`` from :meth:`state_bytes`; ModelError if it does not fit."""
        if len(data) < _HEADER.size:
            raise ModelError(f"incident state too short ({len(data)} bytes)")
        magic, fmt, n, next_number, json_size = _HEADER.unpack_from(data)
        if magic != _MAGIC or fmt != _FORMAT:
            raise ModelError(f"bytes are not an incident state of format {_FORMAT}")
        if n != len(self.sensor_ids) or len(data) != _HEADER.size + n * 16 + json_size:
            raise ModelError(f"incident state is for {n} sensors ({len(data)} bytes); this detector has "
                             f"{len(self.sensor_ids)}")
        offset = _HEADER.size
        self._beyond = np.frombuffer(data, "<u4", n, offset).astype(np.uint32)
        self._within = np.frombuffer(data, "<u4", n, offset + 4 * n).astype(np.uint32)
        self._incident = np.frombuffer(data, "<i8", n, offset + 8 * n).astype(np.int64)
        opened = json.loads(data[offset + 16 * n:].decode())
        self._open = {int(k): (int(v[0]), int(v[1])) for k, v in opened.items()}
        self._grouped = {int(k): [int(i) for i in v[2]] for k, v in opened.items()}
        self._next = next_number


def calibrate_threshold(z: np.ndarray, window_ends: np.ndarray, neighbours: Sequence[np.ndarray],
                        config: IncidentConfig = IncidentConfig(), *, high: float = 100.0) -> tuple[float, int]:
    """The smallest threshold (to 1 %, at least ``config.min_threshold``) whose replay of ``z``
    [windows, sensors] raises at most the budget; returns (threshold, incidents it raises there)."""
    low = config.min_threshold
    windows, sensors = z.shape
    span_ms = float(window_ends[-1] - window_ends[0]) + (float(np.median(np.diff(window_ends))) if windows > 1 else 0)
    budget = config.budget_per_sensor_week * sensors * span_ms / WEEK_MS
    ids = [str(i) for i in range(sensors)]

    def raised(threshold: float) -> int:
        detector = IncidentDetector(ids, neighbours, replace(config, threshold=threshold))
        return sum(e.status == RAISED for t in range(windows) for e in detector.step(int(window_ends[t]), z[t]))

    if raised(high) > budget:
        logger.warning("even threshold %s raises more than the budget of %.1f incidents", high, budget)
        return high, raised(high)
    if raised(low) <= budget:
        return low, raised(low)
    while high / low > 1.01:  # the count falls as the threshold rises: bisect on a log scale
        middle = math.sqrt(low * high)
        low, high = (low, middle) if raised(middle) <= budget else (middle, high)
    return high, raised(high)


def _beyond(z: npt.NDArray[np.float64], limit: float, direction: str) -> npt.NDArray[np.bool_]:
    """Where z lies beyond ``limit`` in ``direction`` (NaN: never)."""
    z = np.nan_to_num(z, nan=0.0)
    if direction == "below":
        return z < -limit
    if direction == "above":
        return z > limit
    return np.abs(z) > limit


def _at(values: np.ndarray | None, index: int) -> float:
    if values is None or not np.isfinite(values[index]):
        return float("nan")
    return float(values[index])


_MAGIC = b"INCD"
_FORMAT = 1
_HEADER = struct.Struct("<4sBIqI")  # magic, format, sensors, next incident number, json size
