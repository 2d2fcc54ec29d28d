"""Traffic baselines: persistence, the input-window mean (T-GCN's "HA") and a time-of-day average."""

from __future__ import annotations

import logging

import numpy as np

from models.exceptions import ModelError

__all__ = ["persistence_forecast", "window_mean_forecast", "TimeOfDayAverage"]

logger = logging.getLogger(__name__)


def persistence_forecast(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the last input: [windows, time, sensors] -> [windows, horizon, sensors]."""
    _check_inputs(inputs)
    return np.repeat(inputs[:, -1:, :], horizon, axis=1)


def window_mean_forecast(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the mean of the inputs: [windows, time, sensors] -> [windows, horizon, sensors]."""
    _check_inputs(inputs)
    return np.repeat(inputs.mean(axis=1, keepdims=True), horizon, axis=1)


class TimeOfDayAverage:
    """Per-sensor mean speed of each time-of-day slot, fitted on training rows only.

    Slots never seen in training fall back to the sensor's overall training mean.
    """

    def __init__(self, slots_per_day: int = 288) -> None:
        self.slots_per_day = slots_per_day
        self.profile: np.ndarray | None = None  # [slots, sensors]

    def fit(self, speeds: np.ndarray, slots: np.ndarray) -> TimeOfDayAverage:
        """``speeds``: [time, sensors]; ``slots``: [time] slot of day of each row."""
        if speeds.ndim != 2 or len(slots) != len(speeds):
            raise ModelError(f"speeds {speeds.shape} and slots {np.shape(slots)} do not match")
        slots = np.asarray(slots, dtype=np.int64) % self.slots_per_day
        sums = np.zeros((self.slots_per_day, speeds.shape[1]))
        np.add.at(sums, slots, speeds)
        counts = np.bincount(slots, minlength=self.slots_per_day)[:, None]
        overall = speeds.mean(axis=0, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.profile = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        return self

    def forecast(self, slots: np.ndarray) -> np.ndarray:
        """Profile values at ``slots`` [windows, horizon] -> [windows, horizon, sensors]."""
        if self.profile is None:
            raise ModelError("TimeOfDayAverage.forecast before fit")
        values: np.ndarray = self.profile[np.asarray(slots, dtype=np.int64) % self.slots_per_day]
        return values


def _check_inputs(inputs: np.ndarray) -> None:
    """ModelError unless inputs are [windows, time >= 1, sensors]."""
    if inputs.ndim != 3 or inputs.shape[1] < 1:
        raise ModelError(f"inputs must be [windows, time, sensors], got shape {inputs.shape}")
