"""Los-loop loading and the T-GCN protocol: windows, splits, metrics and a published number."""

from __future__ import annotations

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.baselines import persistence_forecast
from models.traffic.data import INPUT_STEPS, forecast_metrics, forecast_windows, load_los_loop, strict_split, tgcn_split


def test_forecast_windows_follow_tgcn_loop_bound() -> None:
    speeds = np.arange(20, dtype=float)[:, None] * np.ones((1, 2))
    starts, targets = forecast_windows(speeds, horizon=3, input_steps=4)
    assert starts.tolist() == list(range(20 - 4 - 3))  # T-GCN: range(len - seq - pre)
    np.testing.assert_array_equal(targets[0, :, 0], [4, 5, 6])
    np.testing.assert_array_equal(targets[-1, :, 1], [16, 17, 18])
    with pytest.raises(ModelError, match="no window"):
        forecast_windows(speeds[:7], horizon=3, input_steps=4)


def test_metrics_by_hand() -> None:
    y = np.array([[10.0, 20.0], [2.0, 40.0]])
    y_hat = np.array([[13.0, 16.0], [2.0, 40.0]])
    metrics = forecast_metrics(y, y_hat, mape_floor=5.0)
    assert metrics["rmse"] == pytest.approx(np.sqrt((9 + 16) / 4))
    assert metrics["mae"] == pytest.approx(7 / 4)
    assert metrics["mape"] == pytest.approx(100 * (0.3 + 0.2 + 0.0) / 3)  # 2.0 is under the floor
    assert metrics["accuracy"] == pytest.approx(1 - 5 / np.sqrt(100 + 400 + 4 + 1600))


def test_splits() -> None:
    assert tgcn_split(2016) == tgcn_split(2016, 0.8)
    tgcn, strict = tgcn_split(2016), strict_split(2016)
    assert (tgcn.train, tgcn.val, tgcn.test) == (slice(0, 1612), None, slice(1612, 2016))
    assert (strict.train, strict.val, strict.test) == (slice(0, 1289), slice(1289, 1612),
                                                       slice(1612, 2016))


@pytest.mark.data
def test_los_loop_loads_with_local_time_index(shared_data) -> None:
    series = load_los_loop(shared_data / "los-loop")
    assert series.speeds.shape == (2016, 207) and series.network.n_sensors == 207
    assert series.network.sensor_ids[0] == "773869"
    assert series.slot_of_day()[:3].tolist() == [0, 1, 2] and series.slot_of_day()[288] == 0
    features = series.time_features()
    np.testing.assert_allclose(features[0, :2], [0.0, 1.0], atol=1e-6)  # midnight
    later = series.rows(slice(100, 200))
    assert later.start_ms == series.start_ms + 100 * series.step_ms


@pytest.mark.data
def test_persistence_reproduces_the_published_reference(shared_data) -> None:
    series = load_los_loop(shared_data / "los-loop")
    test = series.speeds[tgcn_split(series.n_steps).test]
    for horizon, rmse, mae in ((3, 5.5428, 3.1561), (12, 8.4555, 4.4332)):
        starts, targets = forecast_windows(test, horizon)
        inputs = test[starts[:, None] + np.arange(INPUT_STEPS)]
        metrics = forecast_metrics(targets, persistence_forecast(inputs, horizon))
        assert metrics["rmse"] == pytest.approx(rmse, abs=1e-4)
        assert metrics["mae"] == pytest.approx(mae, abs=1e-4)


def test_missing_folder_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_los_loop(tmp_path)
