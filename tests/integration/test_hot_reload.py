"""A new checkpoint written while events flow is served without a restart; a corrupt one is refused."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from models.next_action.features import FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig, NextActionModel
from models.next_action.training import model_version, save_next_action
from stream_app.cli.io import to_records

pytestmark = pytest.mark.integration

ACTIONS = [f"a{i}" for i in range(8)]
NOW_MS = int(time.time() * 1000) - 3_600_000


def _write_model(path: Path, hidden_dim: int, seed: int) -> str:
    vocab, spec = Vocabulary(ACTIONS), FeatureSpec(n_cell_buckets=16)
    config = NextActionConfig(vocab_size=len(vocab), embed_dim=8, hidden_dim=hidden_dim, n_cell_buckets=16,
                              cell_dim=4, attn_dim=8, pair_dim=4, window_size=5, dropout=0.0)
    torch.manual_seed(seed)
    model = NextActionModel(config).eval()
    metadata = {"config": config.to_dict(), "vocabulary": vocab.to_list(), "features": spec.to_dict()}
    metadata["version"] = model_version(model, metadata)
    save_next_action(path, model, metadata)
    return metadata["version"]


def _events(start: int, count: int) -> list[dict]:
    return [{"event_id": f"e{i}", "user_id": f"u{i % 6}", "ts": NOW_MS + i * 30_000, "action": ACTIONS[i % 8]}
            for i in range(start, start + count)]


def _wait_for_metric(worker, fragment: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fragment not in worker.metrics_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{fragment!r} never appeared in /metrics")
        time.sleep(0.3)


def test_new_checkpoint_is_served_and_a_corrupt_one_is_refused(deployment, tmp_path):
    path = tmp_path / "served.pt"
    first = _write_model(path, hidden_dim=12, seed=1)
    worker = deployment.worker(STREAM_APP_CHECKPOINT=str(path))
    deployment.produce(to_records(_events(0, 30)))
    deployment.collect("next-action-predictions", 30, settle_s=0.5)

    second = _write_model(tmp_path / "next.pt", hidden_dim=20, seed=2)  # another shape: states rebuilt
    os.replace(tmp_path / "next.pt", path)
    _wait_for_metric(worker, f'stream_app_model_info{{pipeline="behavior",version="{second}"}} 1.0')
    deployment.produce(to_records(_events(30, 30)))
    records = deployment.collect("next-action-predictions", 60)

    path.write_bytes(b"not a checkpoint at all")
    _wait_for_metric(worker, 'stream_app_model_reloads_total{outcome="failed",pipeline="behavior"} 1.0')
    deployment.produce(to_records(_events(60, 30)))
    records = deployment.collect("next-action-predictions", 90)

    versions = {json.loads(r.value)["event_id"]: json.loads(r.value)["model_version"] for r in records}
    assert len(records) == len(versions) == 90, "one prediction per event, none lost across reloads"
    assert {versions[f"e{i}"] for i in range(30)} == {first}
    assert {versions[f"e{i}"] for i in range(30, 90)} == {second}, "the corrupt file did not replace it"
    assert f'stream_app_model_info{{pipeline="behavior",version="{second}"}} 1.0' in worker.metrics_text()
    assert "could not be loaded" in worker.log_tail(20000)
