"""Seasonal profile per sensor: time-of-day and time-of-week averages, blended, updated online.

Slots are ``slot_ms`` wide (a day holds a whole number of them) in the network's local time. Per
sensor the profile keeps each slot's mean and count of values, for the day (``day_*``) and for the
week (``week_*``, weeks starting on Monday), and the sensor's overall mean. Three forecasts read
it:

- ``hour_of_day`` / ``hour_of_week``: the plain slot means (the classic baselines), falling back
  to the sensor mean / the day mean where a slot has no value;
- ``expected``: the week mean shrunk towards the day mean, itself shrunk towards the sensor mean,
  ``(n m + k fallback) / (n + k)``, with the pseudo-counts ``k`` chosen on the training rows by
  leave-one-period-out error (each row predicted without the values of its own day, resp. week);
  that is the profile the model reads.

``leave_one_out`` gives the same blend with each row's own day and week taken out (only the
sensor's overall mean, shared by every row, keeps it): the profile the model is trained on, so it
never reads the value it must forecast. Serving updates the slot
means online with :func:`ewma_update` (an EWMA per slot, a running mean until ``1 / alpha``
values were seen).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.exceptions import ModelError
from models.traffic.calendar import DAY_MS, EPOCH_WEEKDAY

__all__ = ["SeasonalProfile", "ewma_update", "DEFAULT_ALPHA", "profile_slot_ms"]

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05  # EWMA weight of a new value in its slot
_SHRINKAGE_GRID = (0.0, 0.25, 1.0, 4.0, 16.0, 64.0)  # pseudo-counts tried, in periods (days or weeks) of values
_MIN_SLOT_MS = 900_000  # 15 minutes: narrower slots average too few values


def profile_slot_ms(step_ms: int) -> int:
    """Slot width for data sampled every ``step_ms``: the step, at least 15 minutes, dividing a day."""
    slot = -(-max(int(step_ms), _MIN_SLOT_MS) // 60_000) * 60_000
    while DAY_MS % slot:
        slot += 60_000
    return slot


def ewma_update(mean: np.ndarray, count: np.ndarray, values: np.ndarray, observed: np.ndarray,
                alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """One slot's new (mean, count) [sensors] after ``values`` [sensors] (only where ``observed``).

    Pure: the weight of the new value is ``max(alpha, 1 / count)``, so a slot is a plain mean of
    its first ``1 / alpha`` values and an EWMA after.
    """
    seen = np.asarray(observed, dtype=bool) & np.isfinite(values)
    new_count = count + seen
    weight = np.where(seen, np.maximum(alpha, 1.0 / np.maximum(new_count, 1.0)), 0.0)
    start = np.where(count > 0, mean, 0.0)
    new_mean = np.where(seen, start + weight * (np.nan_to_num(values) - start), mean)
    return new_mean, new_count


@dataclass(eq=False)
class SeasonalProfile:
    """Slot means and counts per sensor (see the module doc); arrays are float64."""

    slot_ms: int
    day_mean: np.ndarray  # [slots per day, sensors]
    day_count: np.ndarray
    week_mean: np.ndarray  # [7 * slots per day, sensors]
    week_count: np.ndarray
    sensor_mean: np.ndarray  # [sensors]
    day_shrinkage: float = 4.0  # pseudo-count of values pulling a day slot to the sensor mean
    week_shrinkage: float = 4.0  # pseudo-count pulling a week slot to the day slot

    @property
    def slots_per_day(self) -> int:
        return DAY_MS // self.slot_ms

    @property
    def n_sensors(self) -> int:
        return int(self.sensor_mean.shape[0])

    @classmethod
    def fit(cls, values: np.ndarray, observed: np.ndarray, local_ms: np.ndarray, slot_ms: int, *,
            step_ms: int | None = None) -> SeasonalProfile:
        """Slot means of ``values`` [time, sensors] where ``observed``, rows at ``local_ms`` [time];
        the pseudo-counts are picked by leave-one-period-out error (``step_ms``: the rows' spacing)."""
        if DAY_MS % slot_ms:
            raise ModelError(f"profile slots of {slot_ms} ms do not divide a day")
        values, observed = np.asarray(values, dtype=np.float64), np.asarray(observed, dtype=bool)
        if values.ndim != 2 or observed.shape != values.shape or len(local_ms) != len(values):
            raise ModelError(f"values {values.shape}, observed {observed.shape} and times {np.shape(local_ms)} "
                             "do not match")
        day_slot, week_slot = _slots(np.asarray(local_ms, dtype=np.int64), slot_ms)
        n_day = DAY_MS // slot_ms
        day_mean, day_count = _slot_means(values, observed, day_slot, n_day)
        week_mean, week_count = _slot_means(values, observed, week_slot, 7 * n_day)
        counts = observed.sum(axis=0)
        total = np.where(observed, values, 0.0).sum(axis=0)
        overall = float(total.sum()) / max(int(counts.sum()), 1)
        sensor_mean = np.where(counts > 0, total / np.maximum(counts, 1), overall)
        profile = cls(slot_ms, day_mean, day_count, week_mean, week_count, sensor_mean)
        per_slot = max(1, slot_ms // (step_ms or slot_ms))
        profile.day_shrinkage, profile.week_shrinkage = profile._best_shrinkage(values, observed, local_ms, per_slot)
        return profile

    def hour_of_day(self, local_ms: np.ndarray | int) -> np.ndarray:
        """[..., sensors] plain time-of-day means at ``local_ms`` (the sensor mean for empty slots)."""
        day_slot, _ = _slots(np.asarray(local_ms, dtype=np.int64), self.slot_ms)
        return np.where(self.day_count[day_slot] > 0, self.day_mean[day_slot], self.sensor_mean)

    def hour_of_week(self, local_ms: np.ndarray | int) -> np.ndarray:
        """[..., sensors] plain time-of-week means at ``local_ms`` (the day mean for empty slots)."""
        _, week_slot = _slots(np.asarray(local_ms, dtype=np.int64), self.slot_ms)
        return np.where(self.week_count[week_slot] > 0, self.week_mean[week_slot], self.hour_of_day(local_ms))

    def expected(self, local_ms: np.ndarray | int) -> np.ndarray:
        """[..., sensors] the blended profile at ``local_ms`` (module doc)."""
        day_slot, week_slot = _slots(np.asarray(local_ms, dtype=np.int64), self.slot_ms)
        return self._blend(self.day_mean[day_slot], self.day_count[day_slot], self.week_mean[week_slot],
                           self.week_count[week_slot], self.day_shrinkage, self.week_shrinkage)

    def history(self, local_ms: npt.NDArray[np.integer] | int, step_ms: int) -> npt.NDArray[np.float64]:
        """[..., sensors] periods of history behind :meth:`expected` at ``local_ms``: the week slot's
        weeks, or the day slot's days when more (rows of ``step_ms`` each)."""
        day_slot, week_slot = _slots(np.asarray(local_ms, dtype=np.int64), self.slot_ms)
        per_slot = max(1, self.slot_ms // step_ms)
        periods: npt.NDArray[np.float64] = np.maximum(self.week_count[week_slot], self.day_count[day_slot]) / per_slot
        return periods

    def leave_one_out(self, values: np.ndarray, observed: np.ndarray, local_ms: np.ndarray) -> np.ndarray:
        """[time, sensors] the blend at each row without the values of the row's own day and week.

        ``values``/``observed``/``local_ms`` must be the rows this profile was fitted on.
        """
        parts = self._loo_parts(np.asarray(values, np.float64), np.asarray(observed, bool),
                                np.asarray(local_ms, np.int64))
        return self._blend(*parts, self.day_shrinkage, self.week_shrinkage)

    def observe(self, local_ms: int, values: np.ndarray, observed: np.ndarray, alpha: float = DEFAULT_ALPHA) -> None:
        """Fold one row [sensors] into its day and week slots (:func:`ewma_update`, in place)."""
        day_slot, week_slot = (int(s) for s in _slots(np.asarray(local_ms, dtype=np.int64), self.slot_ms))
        self.day_mean[day_slot], self.day_count[day_slot] = ewma_update(
            self.day_mean[day_slot], self.day_count[day_slot], values, observed, alpha)
        self.week_mean[week_slot], self.week_count[week_slot] = ewma_update(
            self.week_mean[week_slot], self.week_count[week_slot], values, observed, alpha)

    def copy(self) -> SeasonalProfile:
        """An independent copy (the online updates of one do not reach the other)."""
        return SeasonalProfile(self.slot_ms, self.day_mean.copy(), self.day_count.copy(), self.week_mean.copy(),
                               self.week_count.copy(), self.sensor_mean.copy(), self.day_shrinkage,
                               self.week_shrinkage)

    def to_arrays(self) -> dict[str, Any]:
        """Plain arrays and numbers (for a checkpoint); :meth:`from_arrays` reverses it."""
        return {"slot_ms": self.slot_ms, "day_shrinkage": self.day_shrinkage, "week_shrinkage": self.week_shrinkage,
                **{name: getattr(self, name) for name in _ARRAYS}}

    @classmethod
    def from_arrays(cls, data: dict[str, Any], n_sensors: int | None = None) -> SeasonalProfile:
        """Inverse of :meth:`to_arrays`; ModelError if the shapes do not fit."""
        try:
            arrays = {name: np.array(data[name], dtype=np.float64) for name in _ARRAYS}
            profile = cls(int(data["slot_ms"]), **arrays, day_shrinkage=float(data["day_shrinkage"]),
                          week_shrinkage=float(data["week_shrinkage"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"seasonal profile data is incomplete: {exc}") from exc
        n = profile.n_sensors if n_sensors is None else n_sensors
        day_shape = (profile.slots_per_day, n)
        if (profile.day_mean.shape != day_shape or profile.day_count.shape != day_shape
                or profile.week_mean.shape != (7 * day_shape[0], n)
                or profile.week_count.shape != profile.week_mean.shape
                or profile.sensor_mean.shape != (n,)):
            raise ModelError(f"seasonal profile arrays do not fit {n} sensors and {day_shape[0]} slots a day")
        return profile

    def _blend(self, day_mean: np.ndarray, day_count: np.ndarray, week_mean: np.ndarray, week_count: np.ndarray,
               day_k: float, week_k: float) -> np.ndarray:
        day = (day_count * np.nan_to_num(day_mean) + day_k * self.sensor_mean) / np.maximum(day_count + day_k, 1e-12)
        day = np.where(day_count + day_k > 0, day, self.sensor_mean)
        week = (week_count * np.nan_to_num(week_mean) + week_k * day) / np.maximum(week_count + week_k, 1e-12)
        return np.where(week_count + week_k > 0, week, day)

    def _loo_parts(self, values: np.ndarray, observed: np.ndarray,
                   local_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Day and week slot means and counts at each row, without the row's own day and week."""
        day_slot, week_slot = _slots(local_ms, self.slot_ms)
        day_number = local_ms // DAY_MS
        week_number = (day_number + EPOCH_WEEKDAY) // 7
        n_day = self.slots_per_day
        day = _without_own_period(values, observed, day_slot, day_number, n_day, self.day_mean, self.day_count)
        week = _without_own_period(values, observed, week_slot, week_number, 7 * n_day, self.week_mean,
                                   self.week_count)
        return day[0], day[1], week[0], week[1]

    def _best_shrinkage(self, values: np.ndarray, observed: np.ndarray, local_ms: np.ndarray,
                        per_slot: int) -> tuple[float, float]:
        """Pseudo-counts (in values) with the least leave-one-period-out squared error."""
        parts = self._loo_parts(values, observed, np.asarray(local_ms, np.int64))
        slots_per_week = 7 * self.slots_per_day
        best, choice = np.inf, (4.0 * per_slot, 4.0 * per_slot)
        for day_k in _SHRINKAGE_GRID:
            for week_k in _SHRINKAGE_GRID:
                ks = day_k * per_slot, week_k * per_slot
                error = np.where(observed, self._blend(*parts, *ks) - values, 0.0)
                mse = float(np.square(error).sum())
                if mse < best:
                    best, choice = mse, ks
        logger.debug("profile shrinkage %s (%d week slots)", choice, slots_per_week)
        return choice


_ARRAYS = ("day_mean", "day_count", "week_mean", "week_count", "sensor_mean")


def _slots(local_ms: np.ndarray, slot_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot of the day and slot of the week (Monday 00:00 first) of local wall-clock ms."""
    day_slot = (local_ms % DAY_MS) // slot_ms
    weekday = (local_ms // DAY_MS + EPOCH_WEEKDAY) % 7
    return day_slot, weekday * (DAY_MS // slot_ms) + day_slot


def _slot_means(values: np.ndarray, observed: np.ndarray, slot: np.ndarray,
                n_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """[slots, sensors] mean (NaN where empty) and count of the observed values per slot."""
    sums = np.zeros((n_slots, values.shape[1]))
    counts = np.zeros((n_slots, values.shape[1]))
    np.add.at(sums, slot, np.where(observed, values, 0.0))
    np.add.at(counts, slot, observed.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


def _without_own_period(values: np.ndarray, observed: np.ndarray, slot: np.ndarray, period: np.ndarray,
                        n_slots: int, mean: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row [time, sensors]: the slot's mean and count once the row's own period is taken out."""
    key = (period - period.min()) * n_slots + slot
    own_sum = np.zeros((int(key.max()) + 1, values.shape[1]))
    own_count = np.zeros_like(own_sum)
    np.add.at(own_sum, key, np.where(observed, values, 0.0))
    np.add.at(own_count, key, observed.astype(np.float64))
    rest_count = count[slot] - own_count[key]
    rest_sum = np.nan_to_num(mean[slot]) * count[slot] - own_sum[key]
    with np.errstate(invalid="ignore", divide="ignore"):
        rest_mean = np.where(rest_count > 0.5, rest_sum / np.maximum(rest_count, 1), np.nan)
    return rest_mean, np.maximum(rest_count, 0.0)
