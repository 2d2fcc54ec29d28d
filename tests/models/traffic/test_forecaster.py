"""TrafficForecaster: imputation and its flags, gaps, state bytes, checkpoints, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.exceptions import CheckpointError, ModelError
from models.traffic.forecaster import TrafficForecaster, checkpoint_problem
from models.traffic.graph import SensorNetwork
from models.traffic.model import CHECKPOINT_KIND, STEP_MS, TrafficConfig, TrafficGRU
from models.traffic.profile import SeasonalProfile

IDS = ("s0", "s1", "s2", "s3")
T0 = 1_330_560_300_000  # a window end (2012-03-01 00:05 UTC)
HOUR_MS = 3_600_000
MONDAY = 1_704_067_200_000  # 2024-01-01T00:00Z


def _network() -> SensorNetwork:
    adjacency = np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], np.float32)
    return SensorNetwork(name="test", sensor_ids=IDS, coords=None, adjacency=adjacency)


def _model(horizons: tuple[int, ...] = (1, 3, 6)) -> TrafficGRU:
    torch.manual_seed(0)
    model = TrafficGRU(TrafficConfig(n_sensors=len(IDS), hidden_dim=6, horizons=horizons),
                       _network().adjacency)
    torch.nn.init.normal_(model.head.weight, std=0.05)
    return model


def _forecaster(**options) -> TrafficForecaster:
    return TrafficForecaster(_network(), _model(), version="v-test", **options)


def test_imputation_order_and_flags() -> None:
    forecaster = _forecaster()
    first = forecaster.advance(T0, {"s0": 50.0, "s1": 60.0})
    # s2 and s3 never reported: the mean of this window's reports fills them.
    np.testing.assert_array_equal(first.imputed, [False, False, True, True])
    np.testing.assert_allclose(first.values, [50.0, 60.0, 55.0, 55.0])
    assert np.isnan(first.expected).all()
    second = forecaster.advance(T0 + STEP_MS, {"s0": 52.0, "s2": 40.0})
    # s1 is now missing: its previous one-step forecast fills it.
    assert second.imputed.tolist() == [False, True, False, True]
    assert second.values[1] == pytest.approx(first.forecasts[1, 0])
    np.testing.assert_allclose(second.expected, first.forecasts[:, 0])
    assert second.stale_windows.tolist() == [0, 1, 0, 2]
    assert second.forecasts.shape == (len(IDS), 3) and np.isfinite(second.forecasts).all()


def test_last_value_fills_when_there_is_no_forecast() -> None:
    forecaster = _forecaster(max_gap_windows=2)
    forecaster.advance(T0, {"s0": 50.0, "s1": 60.0, "s2": 30.0, "s3": 45.0})
    result = forecaster.advance(T0 + 10 * STEP_MS, {"s0": 51.0})  # long gap: forecasts dropped
    assert result.state_reset and result.filled_windows == 0
    np.testing.assert_allclose(result.values, [51.0, 60.0, 30.0, 45.0])


def test_short_gap_is_stepped_through() -> None:
    forecaster = _forecaster(max_gap_windows=5)
    forecaster.advance(T0, dict.fromkeys(IDS, 50.0))
    result = forecaster.advance(T0 + 3 * STEP_MS, {"s0": 50.0})
    assert result.filled_windows == 2 and not result.state_reset
    assert result.stale_windows.tolist() == [0, 3, 3, 3]
    assert forecaster.last_window_end_ms == T0 + 3 * STEP_MS


def test_never_reporting_sensor_does_not_stall() -> None:
    forecaster = _forecaster()
    for k in range(50):
        result = forecaster.advance(T0 + k * STEP_MS, {"s0": 50.0 + k % 3, "s1": 60.0, "s2": 40.0})
    assert result.imputed.tolist() == [False, False, False, True]
    assert result.stale_windows[3] == 50
    assert np.isfinite(result.forecasts).all() and (result.forecasts >= 0).all()
    # After max_forecast_fill windows of its own forecasts, the window's mean fills it.
    assert result.values[3] == pytest.approx(np.mean([50.0 + 49 % 3, 60.0, 40.0]))


def test_bad_values_and_unknown_sensors_become_flags() -> None:
    result = _forecaster().advance(T0, {"s0": 50.0, "s1": float("nan"), "s2": "fast", "zz": 3.0})
    assert result.imputed.tolist() == [False, True, True, True]
    assert result.unknown_sensors == ("zz",)


def test_windows_must_move_forward() -> None:
    forecaster = _forecaster()
    forecaster.advance(T0, {"s0": 50.0})
    with pytest.raises(ModelError, match="not after"):
        forecaster.advance(T0, {"s0": 50.0})


def test_state_bytes_round_trip() -> None:
    forecaster = _forecaster()
    rng = np.random.default_rng(0)
    for k in range(5):
        values = 40 + 20 * rng.random(3)
        forecaster.advance(T0 + k * STEP_MS, {i: float(v) for i, v in zip(IDS[:3], values, strict=True)})
    data = forecaster.state_bytes()
    restored = forecaster.from_state_bytes(data)
    assert restored.state_bytes() == data and restored.last_window_end_ms == forecaster.last_window_end_ms
    observed = {"s0": 55.0, "s2": 35.0}
    a, b = forecaster.advance(T0 + 5 * STEP_MS, observed), restored.advance(T0 + 5 * STEP_MS, observed)
    np.testing.assert_array_equal(a.forecasts, b.forecasts)
    np.testing.assert_array_equal(a.values, b.values)
    # 4 sensors x 6 hidden + 3 x 4 values + 4 x 3 forecasts, float32, plus the stale counters.
    assert len(data) < 250


def test_fresh_state_round_trip_and_size() -> None:
    forecaster = _forecaster()
    restored = forecaster.from_state_bytes(forecaster.state_bytes())
    assert restored.last_window_end_ms is None


def test_state_of_another_version_keeps_values_only(caplog) -> None:
    old = _forecaster()
    old.advance(T0, dict.fromkeys(IDS, 50.0))
    new = TrafficForecaster(_network(), _model(), version="v-other")
    restored = new.from_state_bytes(old.state_bytes())
    assert "hidden state restarts" in caplog.text
    result = restored.advance(T0 + STEP_MS, {"s0": 40.0})
    np.testing.assert_allclose(result.values, [40.0, 50.0, 50.0, 50.0])  # last values, no forecasts


@pytest.mark.parametrize("data", [b"", b"junk-bytes-that-are-long-enough-for-a-header",
                                  b"TGFS\x02" + bytes(40)])
def test_bad_state_bytes_are_model_errors(data: bytes) -> None:
    with pytest.raises(ModelError):
        _forecaster().from_state_bytes(data)


def test_state_of_another_network_size_is_refused() -> None:
    small = SensorNetwork(name="small", sensor_ids=("a",), coords=None, adjacency=np.zeros((1, 1)))
    data = TrafficForecaster.persistence(small).state_bytes()
    with pytest.raises(ModelError, match="1 sensors"):
        _forecaster().from_state_bytes(data)


def test_persistence_forecaster_has_the_same_interface() -> None:
    forecaster = TrafficForecaster.persistence(_network(), horizons=(3, 6, 12))
    assert forecaster.version == "persistence" and forecaster.hidden_dim == 0
    forecaster.advance(T0, {"s0": 50.0, "s1": 60.0})
    result = forecaster.advance(T0 + STEP_MS, {"s0": 40.0})
    np.testing.assert_allclose(result.forecasts[0], [40.0, 40.0, 40.0])
    np.testing.assert_allclose(result.forecasts[1], [60.0, 60.0, 60.0])  # last value carried
    assert forecaster.from_state_bytes(forecaster.state_bytes()).state_bytes() == forecaster.state_bytes()


def test_one_step_forecast_is_interpolated_without_horizon_one() -> None:
    forecaster = TrafficForecaster(_network(), _model(horizons=(3, 6)), version="v")
    first = forecaster.advance(T0, dict.fromkeys(IDS, 60.0))
    second = forecaster.advance(T0 + STEP_MS, {})
    expected = 60.0 + (first.forecasts[:, 0] - 60.0) / 3
    np.testing.assert_allclose(second.expected, expected, rtol=1e-6)


def _save(path, model: TrafficGRU, sensor_ids=IDS) -> None:
    metadata = {"version": "tgru-test", "network": "test", "sensor_ids": list(sensor_ids),
                "network_fingerprint": _network().fingerprint, "config": model.config.to_dict()}
    save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=model.state_dict(), metadata=metadata)


def test_from_checkpoint_round_trip(tmp_path) -> None:
    model = _model()
    _save(tmp_path / "t.pt", model)
    loaded = TrafficForecaster.from_checkpoint(tmp_path / "t.pt", _network())
    reference = TrafficForecaster(_network(), model, version="tgru-test")
    assert loaded.version == "tgru-test" and loaded.horizons == (1, 3, 6)
    observed = {"s0": 50.0, "s1": 61.0, "s3": 20.0}
    np.testing.assert_allclose(loaded.advance(T0, observed).forecasts,
                               reference.advance(T0, observed).forecasts, rtol=1e-6)


def test_checkpoint_for_other_sensors_is_refused(tmp_path) -> None:
    _save(tmp_path / "t.pt", _model(), sensor_ids=("x0", "x1", "x2", "x3"))
    with pytest.raises(CheckpointError, match="other ids"):
        TrafficForecaster.from_checkpoint(tmp_path / "t.pt", _network())


def test_missing_checkpoint_falls_back_to_persistence_only_when_asked(tmp_path) -> None:
    with pytest.raises(CheckpointError):
        TrafficForecaster.from_checkpoint(tmp_path / "none.pt", _network())
    fallback = TrafficForecaster.from_checkpoint(tmp_path / "none.pt", _network(),
                                                 fallback_to_persistence=True)
    assert fallback.version == "persistence"


def test_timezone_shifts_time_features() -> None:
    utc = _forecaster()
    local = _forecaster(timezone="America/Los_Angeles")
    a = utc.advance(T0, dict.fromkeys(IDS, 50.0)).forecasts
    b = local.advance(T0, dict.fromkeys(IDS, 50.0)).forecasts
    assert not np.allclose(a, b)


def _profile(sensors: int = len(IDS)) -> SeasonalProfile:
    """A profile whose hour-of-day mean is 10 + hour and hour-of-week mean 100 + hour of the week."""
    hours = HOUR_MS * np.arange(14 * 24)
    values = np.repeat((100.0 + (hours // HOUR_MS) % 168)[:, None], sensors, axis=1)
    profile = SeasonalProfile.fit(values, np.ones_like(values, bool), MONDAY + hours, HOUR_MS)
    profile.day_mean[:] = (10.0 + np.arange(24))[:, None]
    return profile


def test_baselines_are_served_at_the_horizons_they_won() -> None:
    sources = ("model", "hour-of-week", "persistence")
    forecaster = TrafficForecaster(_network(), _model(), version="tgru-x", profile=_profile(), sources=sources,
                                   step_ms=HOUR_MS, profile_alpha=0.0)
    plain = TrafficForecaster(_network(), _model(), version="tgru-x", step_ms=HOUR_MS)
    window_end = MONDAY + 8 * HOUR_MS  # the window 07:00-08:00 on a Monday
    observed = {"s0": 50.0, "s1": 60.0, "s2": 70.0, "s3": 80.0}
    result, reference = forecaster.advance(window_end, observed), plain.advance(window_end, observed)
    np.testing.assert_allclose(result.forecasts[:, 0], reference.forecasts[:, 0], rtol=1e-6)
    np.testing.assert_allclose(result.forecasts[:, 1], 100.0 + 7 + 3)  # hour of week of 10:00 Monday
    np.testing.assert_allclose(result.forecasts[:, 2], [50.0, 60.0, 70.0, 80.0])
    assert result.sources == sources
    assert forecaster.version == "tgru-x+hour-of-week@180m+persistence@360m"


def test_window_mean_and_hour_of_day_baselines() -> None:
    forecaster = TrafficForecaster(_network(), _model(), version="v", profile=_profile(), step_ms=HOUR_MS,
                                   sources=("window-mean", "hour-of-day", "window-mean"), input_steps=3,
                                   profile_alpha=0.0)
    for k, value in enumerate([10.0, 20.0, 30.0, 40.0]):
        result = forecaster.advance(MONDAY + (k + 1) * HOUR_MS, dict.fromkeys(IDS, value))
    np.testing.assert_allclose(result.forecasts[:, 0], 30.0)  # mean of the last 3 windows
    np.testing.assert_allclose(result.forecasts[:, 1], 10.0 + 3 + 3)  # hour of day of the row 3 h later
    restored = forecaster.from_state_bytes(forecaster.state_bytes())
    nxt = {s: 50.0 for s in IDS}
    np.testing.assert_allclose(restored.advance(MONDAY + 5 * HOUR_MS, nxt).forecasts,
                               forecaster.advance(MONDAY + 5 * HOUR_MS, nxt).forecasts)


def test_profile_is_updated_online_and_its_state_round_trips() -> None:
    forecaster = TrafficForecaster(_network(), _model(), version="v", profile=_profile(), step_ms=HOUR_MS,
                                   sources=("model", "hour-of-week", "model"), profile_alpha=0.5)
    before = forecaster.profile.hour_of_week(MONDAY)[0]
    forecaster.advance(MONDAY + HOUR_MS, dict.fromkeys(IDS, before + 20.0))
    assert forecaster.profile.hour_of_week(MONDAY)[0] == pytest.approx(before + 10.0)
    other = TrafficForecaster(_network(), _model(), version="v", profile=_profile(), step_ms=HOUR_MS,
                              sources=("model", "hour-of-week", "model"))
    other.load_profile_state_bytes(forecaster.profile_state_bytes())
    assert other.profile.hour_of_week(MONDAY)[0] == pytest.approx(before + 10.0)


def test_sources_need_a_profile_and_known_names() -> None:
    with pytest.raises(ModelError, match="need the seasonal profile"):
        TrafficForecaster(_network(), _model(), version="v", sources=("model", "hour-of-week", "model"))
    with pytest.raises(ModelError, match="sources must name one of"):
        TrafficForecaster(_network(), _model(), version="v", sources=("model", "oracle", "model"))


def test_checkpoint_trained_at_another_interval_is_refused(tmp_path) -> None:
    model = _model()
    metadata = {"version": "tgru-test", "network": "test", "sensor_ids": list(IDS), "interval_ms": HOUR_MS,
                "config": model.config.to_dict()}
    save_checkpoint(tmp_path / "t.pt", kind=CHECKPOINT_KIND, state_dict=model.state_dict(), metadata=metadata)
    with pytest.raises(CheckpointError, match="trained on 3600 s intervals, the windows are 300 s"):
        TrafficForecaster.from_checkpoint(tmp_path / "t.pt", _network(), step_ms=STEP_MS)
    assert TrafficForecaster.from_checkpoint(tmp_path / "t.pt", _network()).step_ms == HOUR_MS
    problem = checkpoint_problem({"sensor_ids": ["a"], "network": "x"}, _network())
    assert problem is not None and "other ids" in problem
