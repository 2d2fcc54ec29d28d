"""Crowd anomaly scoring on cell activity: a window whose event count or distinct users departs from
the cell's own time-of-week profile raises an alert decision (a gathering, or a sudden emptiness).

Each cell keeps, per hour of the week, exponentially weighted means of its events and distinct
users per window, and an overall level. What a window is expected to hold blends the cell's own
slot mean (once the slot has been seen) with its level shaped by the population's rhythm over the
week (all cells together; the hour of the day stands in for a week slot not seen yet), and a
population prior for a cell seen a few times only. The observed value is tested against a negative
binomial around that expectation (overdispersed: one user's session puts several events in a
cell, and slots vary from week to week), on both tails: a spike needs at least ``min_users``
users (or ``min_events`` events), a drop needs an expectation large enough to make nothing
remarkable. Windows that alert are not learned
from. Pure: the caller keeps a ``CellProfile`` per cell and the scorer's population rhythm.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.exceptions import ModelError

__all__ = ["CrowdAnomalyConfig", "CellProfile", "CrowdAlert", "CrowdAnomalyScorer", "week_slot"]

_WEEK_SLOTS = 168
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
_STATS = ("events", "users")
_PROFILE = struct.Struct("<BIq")  # format version, windows seen, last alert (ms, -1 for none)
_PROFILE_VERSION = 1
_SLOT_SEEN_MAX = 65_535  # slot_seen is uint16
_LEVELS = struct.Struct("<2d")


def week_slot(ts_ms: int, utc_offset_hours: float = 0.0) -> int:
    """Local hour of the week of ``ts_ms`` (Monday 00h = 0 .. Sunday 23h = 167)."""
    local = ts_ms + int(round(utc_offset_hours * _HOUR_MS))
    return int(((local // _DAY_MS + 3) % 7) * 24 + (local % _DAY_MS) // _HOUR_MS)


@dataclass(frozen=True, kw_only=True)
class CrowdAnomalyConfig:
    """Thresholds of crowd anomaly scoring.

    alpha: tail probability below which a window alerts (both tails; many cells and windows are
    tested, so it is small). The variance around an expectation mu is mu (1 + clump) + spread mu^2:
    ``clump`` for what arrives in bunches (a user's session puts several events in a cell; events,
    users), ``spread`` for how much a slot varies from week to week. min_users / min_events: the
    least a spike must hold; min_drop_expected: the least expected events for a drop to count;
    memory_windows: the profile forgets with this time constant (windows of one slot);
    prior_windows: how many windows of the population's rhythm weigh in a young cell's
    expectation; warmup_windows: windows observed (all cells) before any alert, and of a cell
    before it may alert on a drop; min_gap_s: event time after an alert during which the cell
    cannot alert again.
    """

    alpha: float = 1e-6
    clump_events: float = 4.0
    clump_users: float = 0.3
    spread: float = 0.05
    min_users: int = 8
    min_events: int = 40
    min_drop_expected: float = 30.0
    memory_windows: float = 20.0
    prior_windows: float = 3.0
    warmup_windows: int = 12
    min_gap_s: float = 3_600.0
    utc_offset_hours: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5 and self.clump_events >= 0 and self.clump_users >= 0 and self.spread >= 0
                and self.memory_windows >= 1 and self.prior_windows > 0 and self.min_gap_s >= 0):
            raise ModelError(f"invalid CrowdAnomalyConfig {self}")


@dataclass
class CellProfile:
    """One cell's learned activity: per statistic (events, users) the level per window and the mean
    per window of each hour of the week, with how many windows each was learned from.

    Plain containers, not numpy: a window is scored a few scalars at a time, where numpy scalars
    cost more than the arithmetic. ``slot_mean`` is float32 (``array('f')``, slot-major: index
    ``2 * slot + statistic``), ``slot_seen`` uint16 (``array('H')``), ``level`` float64.
    """

    level: list[float] = field(default_factory=lambda: [0.0] * len(_STATS))
    seen: int = 0
    slot_mean: array[float] = field(default_factory=lambda: array("f", bytes(4 * _WEEK_SLOTS * len(_STATS))))
    slot_seen: array[int] = field(default_factory=lambda: array("H", bytes(2 * _WEEK_SLOTS)))
    last_alert_ms: int | None = None

    def slot_mean_bytes(self) -> bytes:
        """``slot_mean`` as little-endian float32 [168, 2]."""
        return _little_endian(self.slot_mean)

    def slot_seen_bytes(self) -> bytes:
        """``slot_seen`` as little-endian uint16 [168]."""
        return _little_endian(self.slot_seen)

    @classmethod
    def from_parts(cls, level: list[float], seen: int, slot_mean: bytes, slot_seen: bytes,
                   last_alert_ms: int | None) -> CellProfile:
        """Inverse of the parts above (``level`` as floats); ``ModelError`` for wrong sizes."""
        if len(level) != len(_STATS) or len(slot_mean) != 4 * _WEEK_SLOTS * len(_STATS) or \
                len(slot_seen) != 2 * _WEEK_SLOTS:
            raise ModelError(f"cell profile is corrupt: {len(level)} levels, {len(slot_mean)} bytes of slot "
                             f"means, {len(slot_seen)} bytes of slot counts")
        return cls([float(v) for v in level], seen, _from_little_endian("f", slot_mean),
                   _from_little_endian("H", slot_seen), last_alert_ms)

    def to_bytes(self) -> bytes:
        """Versioned little-endian encoding (about 1.7 KB), for a changelogged table."""
        header = _PROFILE.pack(_PROFILE_VERSION, self.seen, -1 if self.last_alert_ms is None else self.last_alert_ms)
        return b"".join([header, _LEVELS.pack(*self.level), self.slot_mean_bytes(), self.slot_seen_bytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> CellProfile:
        size = _PROFILE.size + _LEVELS.size + 4 * _WEEK_SLOTS * len(_STATS) + 2 * _WEEK_SLOTS
        if len(data) != size:
            raise ModelError(f"cell profile is corrupt: {len(data)} bytes, expected {size}")
        version, seen, last = _PROFILE.unpack_from(data)
        if version != _PROFILE_VERSION:
            raise ModelError(f"cell profile has format {version}, this version reads {_PROFILE_VERSION}")
        offset = _PROFILE.size + _LEVELS.size
        means_end = offset + 4 * _WEEK_SLOTS * len(_STATS)
        return cls.from_parts(list(_LEVELS.unpack_from(data, _PROFILE.size)), seen, data[offset:means_end],
                              data[means_end:], None if last < 0 else last)


def _little_endian(values: array[Any]) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def _from_little_endian(typecode: str, data: bytes) -> array[Any]:
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


@dataclass(frozen=True)
class CrowdAlert:
    """An alert decision for one cell and window: which statistic, observed against expected, the
    tail probability, and whether it is a spike or a drop."""

    cell: str
    window_start_ms: int
    window_end_ms: int
    statistic: str
    kind: str
    observed: float
    expected: float
    p_value: float

    @property
    def score(self) -> float:
        """-log10 of the tail probability (higher is stranger)."""
        return -math.log10(max(self.p_value, 1e-300))

    @property
    def detail(self) -> str:
        return (f"{self.kind} in cell {self.cell}: {self.observed:g} {self.statistic} in the window against "
                f"{self.expected:.1f} expected at this hour of the week (p = {self.p_value:.1e})")


class CrowdAnomalyScorer:
    """Scores cell windows one after another (see the module doc); keeps the population rhythm.

    One window is a handful of scalars: the arithmetic runs on Python floats (numpy on two-element
    arrays cost ~25 µs a window, more than the rest of the cell stage), in the same order as array
    code would, so the numbers are the same.
    """

    def __init__(self, config: CrowdAnomalyConfig = CrowdAnomalyConfig()) -> None:
        self.config = config
        self._week = [[0.0] * len(_STATS) for _ in range(_WEEK_SLOTS)]  # population totals per week slot
        self._week_seen = [0.0] * _WEEK_SLOTS
        self._week_seen_total = 0.0
        self._total = [0.0] * len(_STATS)
        self._cells_windows = 0.0
        self._float32 = array("f", [0.0])  # rounds a float to float32 when stored
        self._memory = config.memory_windows * _WEEK_SLOTS  # the level's longest memory, in windows
        self._slot_start: int | None = None  # the last window start scored, and its week slot
        self._slot = 0

    def rhythm_state(self) -> dict[str, list[float] | float]:
        """The population's weekly rhythm as plain data (to keep it across restarts)."""
        return {"week": [x for row in self._week for x in row], "week_seen": list(self._week_seen),
                "total": list(self._total), "windows": self._cells_windows}

    def load_rhythm(self, state: dict[str, list[float] | float]) -> None:
        """Inverse of ``rhythm_state``."""
        try:
            week = np.asarray(state["week"], dtype=np.float64).reshape(_WEEK_SLOTS, len(_STATS))
            week_seen = np.asarray(state["week_seen"], dtype=np.float64).reshape(_WEEK_SLOTS)
            total = np.asarray(state["total"], dtype=np.float64).reshape(len(_STATS))
            windows = float(state["windows"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"not a crowd rhythm state: {exc}") from exc
        self._week, self._week_seen, self._total = week.tolist(), week_seen.tolist(), total.tolist()
        self._week_seen_total, self._cells_windows = float(week_seen.sum()), windows

    def observe(self, profile: CellProfile, cell: str, window_start_ms: int, window_end_ms: int, events: int,
                users: int) -> CrowdAlert | None:
        """Score one window of ``cell`` against ``profile`` (updated in place, unless the window
        alerts); an alert decision when the window departs from it.

        Most windows cannot alert (too few users and events for a spike, and a cell too young or
        too quiet for a drop): those are learned from without the full test, which would decide the same.
        """
        if window_start_ms != self._slot_start:  # windows close in time order: many share a start
            self._slot_start, self._slot = window_start_ms, week_slot(window_start_ms, self.config.utc_offset_hours)
        slot = self._slot
        if not self._may_alert(profile, slot, events, users):
            self._learn(profile, slot, float(events), float(users))
            return None
        observed = (float(events), float(users))
        alert = self._test(profile, cell, window_start_ms, window_end_ms, observed, self._expected(profile, slot))
        if alert is None:
            self._learn(profile, slot, *observed)
        elif profile.last_alert_ms is not None and \
                window_start_ms - profile.last_alert_ms < self.config.min_gap_s * 1000:
            return None
        else:
            profile.last_alert_ms = window_start_ms
        return alert

    def expected(self, profile: CellProfile, slot: int) -> np.ndarray:
        """Events and users expected in a window of ``slot``: float64 [2]."""
        return np.array(self._expected(profile, slot))

    def _may_alert(self, profile: CellProfile, slot: int, events: int, users: int) -> bool:
        """False when ``_test`` cannot alert on this window (it would return None): no test before
        the warm-up, a spike needs ``min_users`` users or ``min_events`` events, and a drop (events
        only) a cell past its warm-up expecting at least ``min_drop_expected`` events."""
        c = self.config
        if self._cells_windows < c.warmup_windows:
            return False
        if users >= c.min_users or events >= c.min_events:
            return True
        seen = profile.seen
        if seen < c.warmup_windows:
            return False
        # _expected_one(profile, slot, 0) written out (the same operations in the same order): it is
        # needed for nearly every window of a cell past its warm-up
        # (max(1.0, x) as x if x > 1.0 else 1.0: the same value without the call)
        week_seen, total = self._week_seen[slot], self._total[0]
        if week_seen >= 1:
            windows = self._week_seen_total
            t = total / (windows if windows > 1.0 else 1.0)
            shape = self._week[slot][0] / week_seen / t if t > 0 else 1.0
        else:
            shape = self._shape_one(slot, 0)
        prior_windows = c.prior_windows
        slot_seen = float(profile.slot_seen[slot])
        weight = slot_seen / (slot_seen + prior_windows)
        windows = self._cells_windows
        prior = total / (windows if windows > 1.0 else 1.0)
        level = (seen * profile.level[0] + prior_windows * prior) / (seen + prior_windows)
        expected = weight * profile.slot_mean[2 * slot] + (1 - weight) * level * shape
        return (expected if expected > 0.05 else 0.05) >= c.min_drop_expected

    def _expected(self, profile: CellProfile, slot: int) -> list[float]:
        return [self._expected_one(profile, slot, i) for i in range(len(_STATS))]

    def _expected_one(self, profile: CellProfile, slot: int, i: int) -> float:
        """Statistic ``i`` of ``_expected``."""
        prior_windows = self.config.prior_windows
        windows = max(1.0, self._cells_windows)
        seen = float(profile.slot_seen[slot])
        weight = seen / (seen + prior_windows)
        prior = self._total[i] / windows  # an average cell, before this one is known
        level = (profile.seen * profile.level[i] + prior_windows * prior) / (profile.seen + prior_windows)
        return weight * profile.slot_mean[2 * slot + i] + (1 - weight) * level * self._shape_one(slot, i)

    def _shape(self, slot: int) -> list[float]:
        """The population's activity in ``slot`` relative to its average window (1 when unknown);
        the same hour of other days stands in for a week slot not seen yet."""
        return [self._shape_one(slot, i) for i in range(len(_STATS))]

    def _shape_one(self, slot: int, i: int) -> float:
        """Statistic ``i`` of ``_shape``."""
        seen = self._week_seen[slot]
        if seen >= 1:
            rate = self._week[slot][i] / seen
        else:
            hours = [s for s in range(slot % 24, _WEEK_SLOTS, 24) if self._week_seen[s] >= 1]
            if not hours:
                return 1.0
            hours_seen = sum(self._week_seen[s] for s in hours)
            rate = sum(self._week[s][i] for s in hours) / hours_seen
        t = self._total[i] / max(1.0, self._week_seen_total)
        return rate / t if t > 0 else 1.0

    def _test(self, profile: CellProfile, cell: str, start: int, end: int, observed: tuple[float, float],
              expected: list[float]) -> CrowdAlert | None:
        c = self.config
        if self._cells_windows < c.warmup_windows:  # no reference at all yet
            return None
        floors = (c.min_events, c.min_users)
        clumps = (c.clump_events, c.clump_users)
        for i, name in reversed(list(enumerate(_STATS))):  # users first: the clearer sign of a crowd
            mu = max(expected[i], 0.05)
            dispersion = clumps[i] / mu + c.spread  # negative binomial: variance mu + dispersion mu^2
            if observed[i] >= floors[i] and observed[i] > mu:
                p = _upper_tail(observed[i], mu, dispersion, stop_above=c.alpha)
                if p < c.alpha:
                    return CrowdAlert(cell, start, end, name, "spike", observed[i], mu, p)
            if name == "events" and profile.seen >= c.warmup_windows and mu >= c.min_drop_expected and observed[i] < mu:
                p = _lower_tail(observed[i], mu, dispersion)
                if p < c.alpha:
                    return CrowdAlert(cell, start, end, name, "drop", observed[i], mu, p)
        return None

    def _learn(self, profile: CellProfile, slot: int, events: float, users: float) -> None:
        # (min(a, b) as b if b < a else a: the same value without the call)
        seen, memory = profile.seen + 1, self._memory
        rate = 1.0 / (memory if memory < seen else seen)
        level = profile.level
        level_events, level_users = level
        level[0] = level_events + rate * (events - level_events)
        level[1] = level_users + rate * (users - level_users)
        profile.seen = seen
        n = profile.slot_seen[slot] + 1
        memory = self.config.memory_windows
        slot_rate = 1.0 / (memory if memory < n else n)
        means, step, i = profile.slot_mean, self._float32, 2 * slot
        # float32 as stored: the step rounded to float32 (by storing it in an array('f')), then the
        # float32 sum (a float64 sum of two float32 values, rounded once when stored, is the float32 sum)
        m = means[i]
        step[0] = slot_rate * (events - m)
        means[i] = m + step[0]
        m = means[i + 1]
        step[0] = slot_rate * (users - m)
        means[i + 1] = m + step[0]
        profile.slot_seen[slot] = n if n < _SLOT_SEEN_MAX else _SLOT_SEEN_MAX
        week, total = self._week[slot], self._total
        week[0] += events
        week[1] += users
        total[0] += events
        total[1] += users
        self._week_seen[slot] += 1
        self._week_seen_total += 1
        self._cells_windows += 1


def _log_pmf(k: int, mu: float, dispersion: float) -> float:
    """log P(X = k) of a negative binomial of mean ``mu`` and variance mu + dispersion mu^2
    (Poisson when dispersion is 0)."""
    if dispersion <= 0:
        return -mu + k * math.log(mu) - math.lgamma(k + 1)
    r = 1.0 / dispersion
    return (math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) + r * math.log(r / (r + mu))
            + k * math.log(mu / (r + mu)))


def _upper_tail(x: float, mu: float, dispersion: float, stop_above: float = 1.0) -> float:
    """P(X >= x), summed from x upwards (exact for the far tail, where 1 - cdf would round to 0);
    the sum stops once it reaches ``stop_above`` (a test against a level needs no more)."""
    k, total = int(math.ceil(x)), 0.0
    for step in range(100_000):
        term = math.exp(_log_pmf(k + step, mu, dispersion))
        total += term
        if total >= stop_above or term < 1e-18 * total or (term == 0.0 and step > mu):
            break
    return min(1.0, total)


def _lower_tail(x: float, mu: float, dispersion: float) -> float:
    """P(X <= x)."""
    return min(1.0, sum(math.exp(_log_pmf(k, mu, dispersion)) for k in range(int(math.floor(x)) + 1)))
