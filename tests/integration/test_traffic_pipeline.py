"""Traffic through the real broker: windows, network steps, forecasts equal to the offline model."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.traffic.forecaster import TrafficForecaster
from models.traffic.graph import SensorNetwork
from models.traffic.model import CHECKPOINT_KIND, TrafficConfig, TrafficGRU
from schemas import TrafficForecast, decode
from stream_app.cli.demo import write_network_files
from stream_app.cli.io import to_records
from stream_app.replay import read_los_loop

pytestmark = pytest.mark.integration

STEP_MS = 300_000
LOS_STEPS = 30


def _random_traffic_checkpoint(path: Path, network: SensorNetwork) -> Path:
    torch.manual_seed(7)
    model = TrafficGRU(TrafficConfig(n_sensors=network.n_sensors, hidden_dim=8), network.adjacency)
    metadata = {"version": "tgru-test", "network": network.name, "sensor_ids": list(network.sensor_ids),
                "config": model.config.to_dict()}
    return save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=model.state_dict(), metadata=metadata)


def _by_window(records) -> dict[int, dict[str, TrafficForecast]]:
    windows: dict[int, dict[str, TrafficForecast]] = defaultdict(dict)
    for record in records:
        forecast = decode(record.value, TrafficForecast)
        assert isinstance(forecast, TrafficForecast), f"schema-invalid forecast: {forecast}"
        assert forecast.sensor_id not in windows[forecast.window_end], "one forecast per sensor and window"
        windows[forecast.window_end][forecast.sensor_id] = forecast
    return windows


def test_los_loop_replay_forecasts_every_sensor_and_equals_the_offline_model(deployment, shared_data, tmp_path):
    folder = shared_data / "los-loop"
    network = SensorNetwork.from_files("los-loop", folder / "los_adj.csv", folder / "los_speed.csv")
    checkpoint = _random_traffic_checkpoint(tmp_path / "traffic.pt", network)
    readings = list(itertools.islice(read_los_loop(shared_data), LOS_STEPS * network.n_sensors))
    # Windows close because every partition passed them; the last one once all input has been
    # silent for STREAM_APP_WATERMARK_IDLE_S (end of the replay), without a sentinel reading.
    deployment.worker(STREAM_APP_NETWORKS=f"los-loop={folder / 'los_adj.csv'}:{folder / 'los_speed.csv'}",
                      STREAM_APP_TRAFFIC_CHECKPOINT=str(checkpoint), STREAM_APP_WATERMARK_IDLE_S="10")
    deployment.produce(to_records(readings))

    windows = _by_window(deployment.collect("traffic-forecasts", LOS_STEPS * network.n_sensors))
    assert len(windows) == LOS_STEPS, "every window of the replay, the last one included"
    assert all(len(forecasts) == network.n_sensors for forecasts in windows.values())

    offline = TrafficForecaster.from_checkpoint(checkpoint, network)
    observed = defaultdict(dict)
    for reading in readings:
        observed[reading["ts"] - reading["ts"] % STEP_MS + STEP_MS][reading["sensor_id"]] = reading["speed"]
    for window_end in sorted(windows):
        expected = offline.advance(window_end, observed[window_end])
        streamed = windows[window_end]
        got = np.array([[h.speed for h in streamed[s].horizons] for s in network.sensor_ids])
        np.testing.assert_allclose(got, expected.forecasts, rtol=1e-5, atol=1e-4)
        assert all(f.model_version == "tgru-test" and not f.imputed for f in streamed.values())
        assert [h.minutes for h in streamed[network.sensor_ids[0]].horizons] == [15, 30, 60]


def test_missing_sensor_is_imputed_and_does_not_stall_the_network(deployment, tmp_path):
    sensors = [(f"s{i}", 42.28 + 0.005 * i, -83.74) for i in range(4)]
    spec = write_network_files("ring", sensors, tmp_path / "network")
    start = 1_700_000_000_000 - 1_700_000_000_000 % STEP_MS
    readings = [{"sensor_id": sid, "network": "ring", "ts": start + step * STEP_MS + 1000 * i, "speed": 40.0 + step}
                for step in range(6) for i, (sid, _, _) in enumerate(sensors[:3])]  # s3 never reports
    deployment.worker(STREAM_APP_NETWORKS=spec)
    deployment.produce(to_records(readings))

    # Window k closes once a reading passes its end by the 60 s grace, i.e. with step k + 2: stage 1
    # closes windows 0-3; stage 2 steps 0-2 (window 3 waits for its sensors or a later window).
    windows = _by_window(deployment.collect("traffic-forecasts", 3 * len(sensors)))
    assert sorted(windows) == [start + (k + 1) * STEP_MS for k in range(3)]
    for window_end, forecasts in windows.items():
        assert set(forecasts) == {"s0", "s1", "s2", "s3"}
        assert forecasts["s3"].imputed and forecasts["s3"].observed is None
        step = (window_end - start) // STEP_MS - 1
        assert all(not forecasts[s].imputed and forecasts[s].observed == 40.0 + step for s in ("s0", "s1", "s2"))
        assert forecasts["s0"].model_version == "persistence"
        assert all(np.isfinite(h.speed) for h in forecasts["s3"].horizons)
    metrics = deployment.workers[0].metrics_text()
    assert "stream_app_sensors_imputed_total 3.0" in metrics
    summary = deployment.workers[0].get_json("/networks/ring/sensors/s1/forecast")
    assert summary["sensor_id"] == "s1" and summary["window_end"] == max(windows)
