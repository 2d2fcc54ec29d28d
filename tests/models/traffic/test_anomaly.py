"""Anomaly detection: injected drops alert at the right sensor in time, clean noise rarely."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.exceptions import ModelError
from models.traffic.anomaly import FORECAST_RESIDUAL, PROFILE_DROP, AnomalyConfig, AnomalyDetector

STEP_MS = 300_000
SENSORS = 20
DROP_SENSOR, DROP_AT, DROP_LENGTH = 7, 1500, 8


def _daily_profile(t: np.ndarray) -> np.ndarray:
    """[time, sensors] smooth speeds with a rush-hour dip, a different level per sensor."""
    day = (t % 288) / 288
    level = np.linspace(45, 65, SENSORS)
    return level[None, :] - 15 * np.exp(-((day[:, None] - 0.7) / 0.05) ** 2)


def _run(detector: AnomalyDetector, observed: np.ndarray, expected: np.ndarray) -> list:
    alerts = []
    for t in range(len(observed)):
        alerts += detector.update((t + 1) * STEP_MS, observed[t], expected[t])
    return alerts


def _series_with_drop(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(1700)
    expected = _daily_profile(t)
    observed = expected + rng.normal(0, 2.0, expected.shape)
    observed[DROP_AT:DROP_AT + DROP_LENGTH, DROP_SENSOR] *= 0.3
    return observed, expected


@pytest.mark.parametrize("consecutive", [1, 2, 3])
def test_injected_drop_alerts_at_the_right_sensor_within_m_windows(consecutive: int) -> None:
    observed, expected = _series_with_drop()
    config = AnomalyConfig.for_false_positive_rate(1e-4, consecutive=consecutive)
    alerts = _run(AnomalyDetector([f"s{i}" for i in range(SENSORS)], config), observed, expected)
    for kind in (FORECAST_RESIDUAL, PROFILE_DROP):
        during = range(DROP_AT * STEP_MS + 1, (DROP_AT + DROP_LENGTH) * STEP_MS + 1)
        found = [a for a in alerts if a.kind == kind and a.window_end_ms in during]
        first = min(found, key=lambda a: a.window_end_ms)
        assert first.sensor_id == f"s{DROP_SENSOR}" and first.sensor_index == DROP_SENSOR
        assert first.window_end_ms <= (DROP_AT + consecutive) * STEP_MS  # within m windows
        assert first.severity == "critical" and first.observed < first.expected
        assert {a.sensor_index for a in found} == {DROP_SENSOR}
    residual = next(a for a in alerts if a.kind == FORECAST_RESIDUAL and a.sensor_index == DROP_SENSOR)
    assert residual.score < -10  # z of a 30 mph drop against 2 mph noise
    profile = next(a for a in alerts if a.kind == PROFILE_DROP)
    assert profile.score == pytest.approx(0.7, abs=0.1)  # fractional drop


@pytest.mark.parametrize("rate,consecutive", [(1e-3, 2), (1e-2, 3), (1e-3, 1)])
def test_clean_gaussian_noise_alerts_at_most_at_the_configured_rate(rate: float,
                                                                    consecutive: int) -> None:
    rng = np.random.default_rng(42)
    sensors, windows = 100, 2000
    expected = np.full((windows, sensors), 60.0)
    observed = expected + rng.normal(0, 3.0, expected.shape)
    config = AnomalyConfig.for_false_positive_rate(rate, consecutive=consecutive)
    alerts = _run(AnomalyDetector([str(i) for i in range(sensors)], config), observed, expected)
    scored = sensors * (windows - config.warmup_windows)
    measured = sum(a.kind == FORECAST_RESIDUAL for a in alerts) / scored
    # Allow three binomial standard errors of sampling noise above the configured rate.
    assert measured <= rate + 3 * math.sqrt(rate / scored)
    assert not [a for a in alerts if a.kind == PROFILE_DROP]


def test_warmup_windows_do_not_alert() -> None:
    detector = AnomalyDetector(["a"], AnomalyConfig(warmup_windows=10, consecutive=1))
    alerts = []
    for t in range(10):
        alerts += detector.update((t + 1) * STEP_MS, np.array([60.0 + 30 * (t % 2)]), np.array([60.0]))
    assert alerts == []


def test_missing_values_neither_alert_nor_break_a_run() -> None:
    detector = AnomalyDetector(["a", "b"], AnomalyConfig(warmup_windows=0, consecutive=2))
    for t in range(30):
        detector.update((t + 1) * STEP_MS, np.array([60.0 + (t % 3), 50.0]), np.array([60.0, 50.0]))
    assert detector.update(31 * STEP_MS, np.array([20.0, np.nan]), np.array([60.0, 50.0])) == []
    assert detector.update(32 * STEP_MS, np.array([np.nan, np.nan]), np.array([60.0, np.nan])) == []
    alerts = detector.update(33 * STEP_MS, np.array([20.0, 50.0]), np.array([60.0, np.nan]))
    assert [(a.sensor_id, a.consecutive) for a in alerts if a.kind == FORECAST_RESIDUAL] == [("a", 2)]


def test_state_bytes_round_trip() -> None:
    observed, expected = _series_with_drop()
    ids = [f"s{i}" for i in range(SENSORS)]
    detector = AnomalyDetector(ids)
    _run(detector, observed[:DROP_AT], expected[:DROP_AT])
    data = detector.state_bytes()
    restored = AnomalyDetector(ids)
    restored.load_state_bytes(data)
    assert restored.state_bytes() == data
    rest = slice(DROP_AT, None)
    assert _run(restored, observed[rest], expected[rest]) == _run(detector, observed[rest], expected[rest])


@pytest.mark.parametrize("data", [b"", b"XXXX" + bytes(20), AnomalyDetector(["a"]).state_bytes()])
def test_bad_state_bytes_are_model_errors(data: bytes) -> None:
    with pytest.raises(ModelError):
        AnomalyDetector(["a", "b"]).load_state_bytes(data)


@pytest.mark.parametrize("options", [{"threshold": 0.0}, {"threshold": 5.0, "critical_threshold": 4.0},
                                     {"consecutive": 0}, {"scale_alpha": 0.0},
                                     {"drop_fraction": 0.7, "critical_drop_fraction": 0.5},
                                     {"profile_slot_minutes": 7}])
def test_config_validation(options: dict) -> None:
    with pytest.raises(ModelError, match="invalid AnomalyConfig"):
        AnomalyConfig(**options)


def test_wrong_shape_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="observed"):
        AnomalyDetector(["a", "b"]).update(STEP_MS, np.zeros(3), np.zeros(2))
