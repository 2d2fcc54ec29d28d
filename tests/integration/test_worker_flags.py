"""Every ``stream-app worker`` flag is used, with no STREAM_APP_* variable behind it.

One worker started with all five flags at once: it bootstraps to the ``--broker`` given (the
events it processes come from there; without the flag it would start an embedded broker), its
/metrics answers on ``--web-port``, its state folder appears under ``--state-dir``, and the
``model_version`` of its predictions and forecasts comes from ``--checkpoint`` and
``--traffic-checkpoint``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig, NextActionModel
from models.next_action.training import model_version, save_next_action
from models.traffic.graph import SensorNetwork
from models.traffic.model import CHECKPOINT_KIND, TrafficConfig, TrafficGRU
from stream_app.broker import free_port
from stream_app.cli.demo import write_network_files
from stream_app.cli.io import to_records

pytestmark = pytest.mark.integration

ACTIONS = [f"a{i}" for i in range(6)]
NOW_MS = int(time.time() * 1000) - 3_600_000
STEP_MS = 300_000
FLAG_SETTINGS = ("STREAM_APP_BROKER", "STREAM_APP_WEB_PORT", "STREAM_APP_STATE_DIR", "STREAM_APP_CHECKPOINT",
                 "STREAM_APP_TRAFFIC_CHECKPOINT")


def _next_action_checkpoint(path: Path) -> str:
    """A tiny, randomly initialized (seeded) next-action model; returns its version."""
    vocab, spec = Vocabulary(ACTIONS), FeatureSpec(n_cell_buckets=8)
    config = NextActionConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=8, n_cell_buckets=8, cell_dim=2,
                              attn_dim=4, pair_dim=2, window_size=4, dropout=0.0)
    torch.manual_seed(11)
    model = NextActionModel(config).eval()
    metadata = {"config": config.to_dict(), "vocabulary": vocab.to_list(), "features": spec.to_dict()}
    metadata["version"] = model_version(model, metadata)
    save_next_action(path, model, metadata)
    return metadata["version"]


def _traffic_checkpoint(path: Path, network: SensorNetwork) -> Path:
    torch.manual_seed(12)
    model = TrafficGRU(TrafficConfig(n_sensors=network.n_sensors, hidden_dim=4), network.adjacency)
    metadata = {"version": "tgru-flags", "network": network.name, "sensor_ids": list(network.sensor_ids),
                "config": model.config.to_dict()}
    return save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=model.state_dict(), metadata=metadata)


def test_every_worker_flag_is_used_without_its_environment_variable(deployment, tmp_path):
    version = _next_action_checkpoint(tmp_path / "next-action.pt")
    spec = write_network_files("ring", [(f"s{i}", 42.28 + 0.005 * i, -83.74) for i in range(3)], tmp_path / "net")
    adjacency, sensors = spec.split("=", 1)[1].split(":")
    traffic = _traffic_checkpoint(tmp_path / "traffic.pt", SensorNetwork.from_files("ring", adjacency, sensors))
    state_dir, port = tmp_path / "flag-state", free_port()
    flags = ["--broker", deployment.kafka.url, "--web-port", str(port), "--state-dir", str(state_dir),
             "--checkpoint", str(tmp_path / "next-action.pt"), "--traffic-checkpoint", str(traffic)]
    worker = deployment.worker_with_flags(flags, port, STREAM_APP_NETWORKS=spec)
    assert not set(FLAG_SETTINGS) & set(worker.env), "no environment variable behind the flags"

    assert "stream_app_events_consumed_total" in worker.metrics_text(), "/metrics answers on --web-port"
    assert state_dir.is_dir() and any(path.is_dir() for path in state_dir.iterdir()), \
        "the worker's data folder is --state-dir"

    events = [{"event_id": f"e{i}", "user_id": f"u{i % 3}", "ts": NOW_MS + i * 1000, "action": ACTIONS[i % 6]}
              for i in range(9)]
    start = NOW_MS - NOW_MS % STEP_MS
    readings = [{"sensor_id": f"s{i}", "network": "ring", "ts": start + step * STEP_MS + 1000 * i, "speed": 40.0 + i}
                for step in range(4) for i in range(3)]
    deployment.produce(to_records(events + readings))

    predictions = [json.loads(r.value) for r in deployment.collect("next-action-predictions", len(events),
                                                                   settle_s=0.5)]
    assert sorted(p["event_id"] for p in predictions) == sorted(e["event_id"] for e in events), \
        "events from the --broker given were processed"
    assert {p["model_version"] for p in predictions} == {version}, "served from --checkpoint"
    # Windows 0 and 1 close (the latest reading passes their end by the grace); each steps 3 sensors.
    forecasts = [json.loads(r.value) for r in deployment.collect("traffic-forecasts", 6, settle_s=0.5)]
    assert len(forecasts) >= 6 and {f["model_version"] for f in forecasts} == {"tgru-flags"}, \
        "served from --traffic-checkpoint"
    assert "Embedded" not in worker.log_tail(20000), "no embedded broker was started"
