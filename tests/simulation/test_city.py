"""The simulated city: determinism, schema validity, traffic realism, incidents."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from simulation.city import Incident, TrafficConfig, generate_traffic, iter_traffic_readings, write_traffic_files
from simulation.clock import HOUR_MS, SimulationConfigError

READING_KEYS = {"sensor_id", "network", "ts", "speed", "flow", "occupancy", "lat", "lon"}

USER_KEYS = {"event_id", "user_id", "ts", "action", "item_id", "category", "lat", "lon",
             "session_id", "properties"}


# --------------------------------------------------------------------------- traffic

TRAFFIC = TrafficConfig(n_sensors=16, seed=5, duration_hours=30.0, incident_rate_per_day=2.0,
                        dropout_prob=0.01, n_dead_sensors=1)


@pytest.fixture(scope="module")
def traffic():
    return generate_traffic(TRAFFIC)


def _speeds(workload, start_ms: int, interval_ms: int = 60_000) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {}
    for r in workload.readings:
        table.setdefault(r["sensor_id"], {})[(r["ts"] - start_ms) // interval_ms] = r["speed"]
    return table


def test_traffic_same_config_same_output(traffic):
    assert generate_traffic(TRAFFIC) == traffic
    other = generate_traffic(TrafficConfig(n_sensors=16, seed=6, duration_hours=30.0))
    assert other.readings != traffic.readings


def test_readings_sorted_and_schema_valid(traffic):
    ts = [r["ts"] for r in traffic.readings]
    assert ts == sorted(ts)
    for r in traffic.readings:
        assert set(r) == READING_KEYS and r["network"] == TRAFFIC.network
        assert isinstance(r["ts"], int) and isinstance(r["speed"], float) and r["speed"] >= 0
        assert r["flow"] is None or r["flow"] >= 0
        assert r["occupancy"] is None or 0.0 <= r["occupancy"] <= 1.0
        assert -90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180


def test_network_geometry(traffic):
    assert len(traffic.sensors) == 16
    lengths = [km for _, _, km in traffic.edges]
    assert len(lengths) == 16 - TRAFFIC.n_corridors
    assert 0.4 <= min(lengths) and max(lengths) <= 1.3


def test_dead_sensor_and_dropouts(traffic):
    (dead,) = traffic.dead_sensors
    reporting = {r["sensor_id"] for r in traffic.readings}
    assert dead not in reporting and len(reporting) == 15
    full = 15 * 30 * 60
    assert 0.97 * full <= len(traffic.readings) < full


def test_rush_hour_slower_than_night(traffic):
    hours = np.array([(r["ts"] + -5 * HOUR_MS) % 86_400_000 // HOUR_MS for r in traffic.readings])
    speed = np.array([r["speed"] for r in traffic.readings])
    occupancy = np.array([np.nan if r["occupancy"] is None else r["occupancy"] for r in traffic.readings])
    rush, night = np.isin(hours, (8, 17)), np.isin(hours, (2, 3))
    assert speed[rush].mean() < speed[night].mean() - 8
    assert 58 <= np.median(speed[night]) <= 67
    assert np.nanmean(occupancy[rush]) > 2 * np.nanmean(occupancy[night])


def test_weekend_is_lighter():
    saturday = TrafficConfig(n_sensors=8, duration_hours=24.0, start_ms=TrafficConfig().start_ms + 5 * 86_400_000,
                             incident_rate_per_day=0.0)
    monday = TrafficConfig(n_sensors=8, duration_hours=24.0, incident_rate_per_day=0.0)
    speeds = [min(r["speed"] for r in generate_traffic(c).readings) for c in (monday, saturday)]
    assert speeds[0] < speeds[1] - 5


def test_incident_depresses_its_sensor_and_upstream():
    base = TrafficConfig(n_sensors=12, n_corridors=2, duration_hours=4.0, incident_rate_per_day=0.0,
                         dropout_prob=0.0, speed_only_fraction=0.0)
    upstream, sensor, _ = generate_traffic(base).edges[2]
    start = base.start_ms + 2 * HOUR_MS  # 02:00 local, free flow
    incident = Incident(sensor_id=sensor, start_ms=start, end_ms=start + 40 * 60_000, severity=0.8)
    hit = generate_traffic(dataclasses.replace(base, incidents=(incident,)))
    assert hit.incidents == [incident]
    calm, jam = _speeds(generate_traffic(base), base.start_ms), _speeds(hit, base.start_ms)
    window = range(125, 160)
    drop = [np.mean([t[s][k] for k in window]) for t in (calm, jam) for s in (sensor, upstream)]
    assert drop[2] < 0.5 * drop[0]                     # the incident sensor slows sharply
    assert drop[2] < drop[3] < drop[1] - 5             # upstream slows too, but less


def test_traffic_iterator_matches_and_never_ends(traffic):
    prefix = list(itertools.islice(iter_traffic_readings(TRAFFIC), 2_000))
    assert prefix == traffic.readings[:2_000]
    endless = iter_traffic_readings(TrafficConfig(n_sensors=4, n_corridors=1, duration_hours=None))
    readings = list(itertools.islice(endless, 4 * 60 * 30))
    assert readings[-1]["ts"] - readings[0]["ts"] > 25 * HOUR_MS


def test_traffic_bad_configs():
    with pytest.raises(SimulationConfigError):
        TrafficConfig(dropout_prob=1.5)
    with pytest.raises(SimulationConfigError):
        generate_traffic(TrafficConfig(duration_hours=None))
    ghost = Incident(sensor_id="nope", start_ms=0, end_ms=1, severity=0.5)
    with pytest.raises(SimulationConfigError):
        generate_traffic(TrafficConfig(n_sensors=4, duration_hours=1.0, incidents=(ghost,)))


# --------------------------------------------------------------------------- weekly cycle and counts

def _mean_speed(config: TrafficConfig, day: int, hours: tuple[float, float]) -> float:
    """Mean speed of every sensor between two local hours of day ``day`` (0 = the Monday of the start)."""
    start = config.start_ms + day * 86_400_000
    readings = generate_traffic(dataclasses.replace(config, start_ms=start, duration_hours=24.0)).readings
    low, high = start + int(hours[0] * HOUR_MS), start + int(hours[1] * HOUR_MS)
    return float(np.mean([r["speed"] for r in readings if low <= r["ts"] < high]))


def test_weekly_cycle_friday_evening_and_weekend_days_differ():
    quiet = TrafficConfig(n_sensors=12, incident_rate_per_day=0.0, day_variation=0.0, dropout_prob=0.0)
    tuesday, friday = _mean_speed(quiet, 1, (16.5, 18.5)), _mean_speed(quiet, 4, (16.5, 18.5))
    assert friday < tuesday - 1.0  # Friday's evening rush is heavier
    saturday, sunday = _mean_speed(quiet, 5, (11.0, 16.0)), _mean_speed(quiet, 6, (11.0, 16.0))
    assert saturday < sunday  # Saturday's midday is busier


def test_days_vary_around_the_profile():
    varied = TrafficConfig(n_sensors=12, incident_rate_per_day=0.0, dropout_prob=0.0, day_variation=0.3, seed=2)
    tuesdays = [_mean_speed(varied, day, (7.0, 9.0)) for day in (1, 8)]
    assert abs(tuesdays[0] - tuesdays[1]) > 0.5  # same weekday, same hours, another day's demand


def test_counts_are_whole_sparse_schema_valid_and_written_as_files(tmp_path):
    from schemas import TrafficReading, decode_traffic_reading, encode

    config = TrafficConfig(n_sensors=10, duration_hours=7 * 24, interval_ms=HOUR_MS, measure="count",
                           count_scale=0.0001, incident_rate_per_day=0.0)
    workload = generate_traffic(config)
    values = np.array([r["value"] for r in workload.readings])
    assert all(isinstance(r["value"], int) and r["kind"] == "count" and "speed" not in r for r in workload.readings)
    assert 0.5 < (values == 0).mean() < 0.95 and values.max() > 2  # many zeros, some busy hours
    clock = lambda: workload.readings[-1]["ts"] / 1000  # noqa: E731
    decoded = decode_traffic_reading(encode(workload.readings[0]), clock=clock)
    assert isinstance(decoded, TrafficReading) and decoded.kind == "count"
    readings, edges, sensors = write_traffic_files(workload, tmp_path)
    assert readings.read_text().splitlines()[0] == "sensor_id,ts,count"
    assert len(edges.read_text().splitlines()) == len(workload.edges) + 1
    assert len(sensors.read_text().splitlines()) == 11
