"""Anomaly alerts on the generator's network: incidents are caught, clean roads stay quiet.

The same parts the traffic agents run (event-time windows, the forecaster, the per-network
alerts), composed without Kafka, over days of generated readings.
"""

from __future__ import annotations

import numpy as np

from models.traffic.forecaster import TrafficForecaster
from models.traffic.graph import SensorNetwork
from simulation.city import Incident, TrafficConfig, generate_traffic
from stream_app.settings import Settings
from stream_app.traffic_alerts import NetworkAlerts
from stream_app.windows import EventTimeWindows, SpeedWindow

WINDOW_MS = 300_000
DAY_MS = 86_400_000
SETTINGS = Settings(anomaly_z=4.0, anomaly_consecutive=2)


def _run(config: TrafficConfig):
    """(alerts with their window ends, sensor-windows scored after warm-up, workload)."""
    workload = generate_traffic(config)
    ids = [s[0] for s in workload.sensors]
    network = SensorNetwork.from_coordinates(config.network, ids, np.array([[a, o] for _, a, o in workload.sensors]))
    forecaster = TrafficForecaster.persistence(network, horizons=(3, 6, 12))
    alerts = NetworkAlerts(config.network, network, SETTINGS)
    windows = EventTimeWindows(size_ms=WINDOW_MS, new_window=SpeedWindow)
    found, scored = [], 0
    for reading in workload.readings:
        windows.add(reading["sensor_id"], reading["ts"], reading["speed"], reading.get("flow"))
    by_end: dict[int, dict[str, float]] = {}
    for sensor, start, window in windows.close(max(r["ts"] for r in workload.readings) + WINDOW_MS):
        by_end.setdefault(start + WINDOW_MS, {})[sensor] = window.mean
    for window_end in sorted(by_end):
        result = forecaster.advance(window_end, by_end[window_end])
        found.extend(alerts.score(result))
        if window_end - config.start_ms > 2 * DAY_MS:
            scored += len(by_end[window_end])
    return found, scored, workload


def test_injected_incident_alerts_the_right_sensor_quickly():
    base = TrafficConfig(n_sensors=12, seed=4, duration_hours=72, incident_rate_per_day=0, dropout_prob=0.0)
    target = generate_traffic(TrafficConfig(n_sensors=12, seed=4, duration_hours=0)).sensors[5][0]
    start = base.start_ms + 2 * DAY_MS + 15 * 3_600_000  # day 3, 15:00 local-ish: outside the rush
    incident = Incident(sensor_id=target, start_ms=start, end_ms=start + 45 * 60_000, severity=0.7)
    config = TrafficConfig(n_sensors=12, seed=4, duration_hours=72, incident_rate_per_day=0, dropout_prob=0.0,
                           incidents=(incident,))
    alerts, _, _ = _run(config)
    hits = [a for a in alerts if a.sensor_id == target and start <= a.window_end_ms <= start + 45 * 60_000]
    assert hits, "the incident sensor raises an alert while the incident lasts"
    first = min(a.window_end_ms for a in hits)
    assert (first - start) // WINDOW_MS <= 4, "within four windows of the incident's start"


def test_clean_run_stays_under_the_false_positive_rate():
    config = TrafficConfig(n_sensors=12, seed=9, duration_hours=96, incident_rate_per_day=0, dropout_prob=0.0)
    alerts, scored, _ = _run(config)
    after_warmup = [a for a in alerts if a.window_end_ms - config.start_ms > 2 * DAY_MS]
    assert scored > 5000
    assert len(after_warmup) / scored <= 0.01, f"{len(after_warmup)} alerts in {scored} sensor-windows"
