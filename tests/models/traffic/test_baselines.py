"""Traffic baselines on hand-made windows."""

from __future__ import annotations

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.baselines import TimeOfDayAverage, persistence_forecast, window_mean_forecast

# 2 windows x 3 steps x 2 sensors
INPUTS = np.array([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]],
                   [[4.0, 40.0], [5.0, 50.0], [9.0, 60.0]]])


def test_persistence_repeats_the_last_value() -> None:
    forecast = persistence_forecast(INPUTS, horizon=2)
    assert forecast.shape == (2, 2, 2)
    np.testing.assert_array_equal(forecast[0], [[3.0, 30.0], [3.0, 30.0]])
    np.testing.assert_array_equal(forecast[1, 1], [9.0, 60.0])


def test_window_mean_repeats_the_mean() -> None:
    forecast = window_mean_forecast(INPUTS, horizon=3)
    assert forecast.shape == (2, 3, 2)
    np.testing.assert_allclose(forecast[1, 2], [6.0, 50.0])


def test_time_of_day_average_by_hand() -> None:
    # 4 slots per day, two days; sensor 0 speeds 10 + slot on day one, 20 + slot on day two.
    speeds = np.array([[10, 1], [11, 1], [12, 1], [13, 1], [20, 3], [21, 3], [22, 3], [23, 3]], float)
    slots = np.arange(8) % 4
    model = TimeOfDayAverage(slots_per_day=4).fit(speeds, slots)
    forecast = model.forecast(np.array([[0, 1], [3, 4]]))  # slot 4 wraps to slot 0
    assert forecast.shape == (2, 2, 2)
    np.testing.assert_allclose(forecast[0, :, 0], [15.0, 16.0])
    np.testing.assert_allclose(forecast[1, :, 0], [18.0, 15.0])
    np.testing.assert_allclose(forecast[..., 1], 2.0)


def test_unseen_slot_falls_back_to_the_sensor_mean() -> None:
    model = TimeOfDayAverage(slots_per_day=4).fit(np.array([[10.0], [20.0]]), np.array([0, 1]))
    np.testing.assert_allclose(model.forecast(np.array([[2]])), [[[15.0]]])


def test_misuse_is_a_model_error() -> None:
    with pytest.raises(ModelError):
        TimeOfDayAverage().forecast(np.zeros((1, 1), int))
    with pytest.raises(ModelError):
        persistence_forecast(np.zeros((2, 3)), 1)
    with pytest.raises(ModelError):
        TimeOfDayAverage().fit(np.zeros((3, 2)), np.zeros(2))
