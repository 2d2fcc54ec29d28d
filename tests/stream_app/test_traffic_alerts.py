"""Incident alerts through stage 2 of the traffic pipeline (the plain class, no Kafka).

A network of 8 sensors in a row with a daily cycle: its profile is fitted on two weeks and the
incident monitor calibrated on the third (what training stores in a checkpoint); then a fourth
week is stepped through :class:`NetworkSnapshots` serving that model, clean or with an injected
incident.
"""

from __future__ import annotations

import msgspec
import numpy as np

from models.traffic.data import Split, TrafficSeries
from models.traffic.forecaster import TrafficForecaster
from models.traffic.graph import SensorNetwork
from models.traffic.monitor import IncidentMonitor, calibrate_incidents
from models.traffic.training import fit_profile
from schemas import AnomalyAlert, SensorAggregate
from stream_app.metrics import Metrics
from stream_app.pipelines.traffic import NetworkSnapshots
from stream_app.settings import Settings
from stream_app.traffic_models import ServedModel

HOUR = 3_600_000
WEEK = 7 * 24 * HOUR
STEP = 900_000
T0 = 1_699_833_600_000  # a Monday, 00:00 UTC
SENSORS = tuple(f"s{i}" for i in range(8))
LINE = SensorNetwork(name="line", sensor_ids=SENSORS, coords=None,
                     adjacency=np.diag(np.ones(7), 1) + np.diag(np.ones(7), -1))
SETTINGS = Settings(sensor_window_s=STEP // 1000, horizons_min=(15, 30, 60))
WEEK_ROWS = WEEK // STEP


def _speeds(weeks: int, seed: int) -> np.ndarray:
    """[windows, sensors] speeds with a morning and evening rush, a level per sensor, noise."""
    hours = (np.arange(weeks * WEEK_ROWS) * STEP % (24 * HOUR)) / HOUR
    rush = 0.8 * np.exp(-((hours - 8) / 1.5) ** 2) + 1.0 * np.exp(-((hours - 17) / 2) ** 2)
    expected = 65 - 10 * rush[:, None] * np.linspace(1.0, 2.0, len(SENSORS))[None, :]
    return expected + np.random.default_rng(seed).normal(0, 1.0, expected.shape)


class _Checkpoint:
    """What ``TrafficModels`` gives the stage for a trained checkpoint: the model and its calibrated monitor."""

    def __init__(self, history: np.ndarray) -> None:
        series = TrafficSeries(LINE, history, start_ms=T0, step_ms=STEP)
        split = Split(train=slice(0, 2 * WEEK_ROWS), val=slice(2 * WEEK_ROWS, 3 * WEEK_ROWS), test=slice(0, 0))
        profile = fit_profile(series, split.train)
        self.calibration = calibrate_incidents(series, split, profile)
        self.profile = profile

    def load(self, network: SensorNetwork) -> ServedModel:
        forecaster = TrafficForecaster.persistence(network, horizons=(1, 2, 4), step_ms=STEP, profile=self.profile)
        return ServedModel(forecaster, IncidentMonitor(network, self.calibration, timezone=None, step_ms=STEP),
                           "test.pt")

    def changed(self, networks: list[str]) -> list[str]:
        return []


def _alerts(week: np.ndarray, checkpoint: _Checkpoint) -> list[AnomalyAlert]:
    """Step ``week`` (the fourth) through stage 2; every alert record it sent."""
    stage = NetworkSnapshots(SETTINGS, {}, Metrics(), networks={"line": LINE}, models=checkpoint)
    sent = []
    for row, values in enumerate(week, start=3 * WEEK_ROWS):
        start = T0 + row * STEP
        outputs = stage.process(SensorAggregate(sensor_id=s, network="line", window_start=start,
                                                window_end=start + STEP, mean_speed=float(v), min_speed=float(v),
                                                max_speed=float(v), count=1, flow_sum=None)
                                for s, v in zip(SENSORS, values, strict=True))
        assert len(outputs.forecasts) == len(SENSORS)
        sent += [(key, msgspec.json.decode(value, type=AnomalyAlert)) for key, value in outputs.alerts]
    assert all(key == alert.key.encode() for key, alert in sent), "keyed by sensor"
    return [alert for _, alert in sent]


def test_a_clean_network_stays_within_its_alert_budget_through_the_pipeline() -> None:
    history = _speeds(4, seed=1)
    checkpoint = _Checkpoint(history[:3 * WEEK_ROWS])
    alerts = _alerts(history[3 * WEEK_ROWS:], checkpoint)
    raised = [a for a in alerts if a.status == "raised"]
    budget = checkpoint.calibration.config.budget_per_sensor_week  # per sensor and week, calibrated on validation
    assert len(raised) <= budget * len(SENSORS), f"{len(raised)} incidents in a clean week of {len(SENSORS)} sensors"
    assert all(a.kind == "incident" for a in alerts)


def test_an_injected_incident_raises_one_alert_for_its_sensor_and_a_resolution_after_it_ends() -> None:
    history = _speeds(4, seed=2)
    week = history[3 * WEEK_ROWS:].copy()
    start_row = 2 * 24 * 4 + 14 * 4  # Wednesday 14:00
    week[start_row:start_row + 8, 3] -= 35  # two hours at half speed on s3
    alerts = _alerts(week, _Checkpoint(history[:3 * WEEK_ROWS]))
    started, ended = T0 + (3 * WEEK_ROWS + start_row) * STEP, T0 + (3 * WEEK_ROWS + start_row + 8) * STEP
    during = [a for a in alerts if started <= a.ts <= ended + 6 * STEP]
    raised = [a for a in during if a.status == "raised"]
    assert [a.key for a in raised] == ["s3"], f"one incident, raised by the slowed sensor: {during}"
    assert raised[0].ts - started <= 3 * STEP, "within three windows of its start"
    resolved = [a for a in during if a.status == "resolved" and a.incident_id == raised[0].incident_id]
    assert len(resolved) == 1 and resolved[0].ts > ended, "resolved once, after the speeds came back"
    assert "s3" in resolved[0].sensors
