"""Per-network traffic checkpoints through the real broker: another network's checkpoint is refused, a new file
is served without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.traffic.model import CHECKPOINT_KIND, TrafficConfig, TrafficGRU
from schemas import TrafficForecast, decode
from stream_app.cli.demo import write_network_files
from stream_app.cli.io import to_records

pytestmark = pytest.mark.integration

STEP_MS = 300_000
SENSORS = [(f"s{i}", 42.28 + 0.005 * i, -83.74) for i in range(4)]
MISMATCH = 'stream_app_model_reloads_total{outcome="network_mismatch",pipeline="traffic"} 1.0'
LOADED = 'stream_app_model_reloads_total{outcome="loaded",pipeline="traffic"} 1.0'


def _checkpoint(path: Path, network: str, sensor_ids: list[str], version: str) -> None:
    """A small random model trained (as far as the worker can tell) on ``sensor_ids``; written atomically."""
    torch.manual_seed(3)
    n = len(sensor_ids)
    model = TrafficGRU(TrafficConfig(n_sensors=n, hidden_dim=8), torch.ones(n, n).numpy())
    metadata = {"version": version, "network": network, "sensor_ids": sensor_ids, "config": model.config.to_dict(),
                "interval_ms": STEP_MS}
    save_checkpoint(path.with_suffix(".tmp"), kind=CHECKPOINT_KIND, state_dict=model.state_dict(), metadata=metadata)
    path.with_suffix(".tmp").replace(path)


def _readings(start: int, steps: range) -> list[dict]:
    return [{"sensor_id": sid, "network": "ring", "ts": start + step * STEP_MS + 1000 * i, "speed": 40.0 + step}
            for step in steps for i, (sid, _, _) in enumerate(SENSORS)]


def _versions(records) -> dict[int, set[str]]:
    versions: dict[int, set[str]] = {}
    for record in records:
        forecast = decode(record.value, TrafficForecast)
        assert isinstance(forecast, TrafficForecast), forecast
        versions.setdefault(forecast.window_end, set()).add(forecast.model_version)
    return versions


def _wait_for(worker, text: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.metrics_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text} never appeared in /metrics; worker log:\n{worker.log_tail()}")
        time.sleep(0.5)


def test_another_networks_checkpoint_is_refused_and_a_new_file_is_served_without_a_restart(deployment, tmp_path):
    spec = write_network_files("ring", SENSORS, tmp_path / "network")
    checkpoint = tmp_path / "ring.pt"
    _checkpoint(checkpoint, "elsewhere", [f"x{i}" for i in range(len(SENSORS))], "tgru-elsewhere")
    # Every window closes once the input has been silent for 3 s: no sentinel readings needed.
    worker = deployment.worker(STREAM_APP_NETWORKS=spec, STREAM_APP_TRAFFIC_CHECKPOINT=f"ring={checkpoint}",
                               STREAM_APP_WATERMARK_IDLE_S="3")
    start = 1_700_000_000_000 - 1_700_000_000_000 % STEP_MS
    deployment.produce(to_records(_readings(start, range(4))))

    first = _versions(deployment.collect("traffic-forecasts", 4 * len(SENSORS)))
    assert sorted(first) == [start + (k + 1) * STEP_MS for k in range(4)], "the last window closed too"
    assert all(v == {"persistence"} for v in first.values()), "the mismatched checkpoint is not served"
    assert MISMATCH in worker.metrics_text()
    log = worker.log_tail(20_000)
    assert "traffic network ring: refusing checkpoint" in log and "has other ids or another order" in log
    assert "Train one on this network" in log, "the message says how to fix it"

    _checkpoint(checkpoint, "ring", [s for s, _, _ in SENSORS], "tgru-ring")
    _wait_for(worker, LOADED)
    # Later than the watermark the idle input pushed on (one window plus the silent time).
    deployment.produce(to_records(_readings(start, range(8, 10))))
    later = _versions(deployment.collect("traffic-forecasts", 6 * len(SENSORS)))
    assert sorted(set(later) - set(first)) == [start + 9 * STEP_MS, start + 10 * STEP_MS]
    assert later[start + 9 * STEP_MS] == later[start + 10 * STEP_MS] == {"tgru-ring"}, "reloaded without a restart"
