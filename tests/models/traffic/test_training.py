"""Training on a slice of Los-loop: validation loss falls, runs repeat, checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.traffic.data import TrafficSeries, load_los_loop, strict_split
from models.traffic.forecaster import TrafficForecaster, load_traffic_model
from models.traffic.graph import SensorNetwork
from models.traffic.model import TrafficConfig
from models.traffic.training import (
    TrainConfig,
    model_version,
    save_traffic_checkpoint,
    stream_predictions,
    train_traffic,
    window_predictions,
)

pytestmark = pytest.mark.data
SENSORS, STEPS = 24, 700
FAST = TrainConfig(epochs=3, batch_size=16, chunk_steps=16, chunk_stride=3, learning_rate=3e-3,
                   progress=False)


@pytest.fixture(scope="module")
def series(shared_data) -> TrafficSeries:
    full = load_los_loop(shared_data / "los-loop")
    network = SensorNetwork(name="los-loop-slice", sensor_ids=full.network.sensor_ids[:SENSORS],
                            coords=None, adjacency=full.network.adjacency[:SENSORS, :SENSORS])
    return TrafficSeries(network=network, speeds=full.speeds[:STEPS, :SENSORS].copy(),
                         start_ms=full.start_ms, fingerprint=full.fingerprint)


def _config() -> TrafficConfig:
    return TrafficConfig(n_sensors=SENSORS, hidden_dim=12, horizons=tuple(range(1, 4)))


@pytest.fixture(scope="module")
def trained(series: TrafficSeries):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield train_traffic(series, strict_split(STEPS), _config(), FAST)
    torch.set_num_threads(previous)


def test_validation_loss_decreases(trained) -> None:
    losses = [record["val_loss"] for record in trained.history]
    assert trained.history[0]["epoch"] == 0 and len(losses) == FAST.epochs + 1
    assert losses[-1] < losses[1] and min(losses[1:]) < losses[0]  # epoch 0 is persistence
    assert trained.best_epoch >= 1 and trained.val_metrics["val_loss"] == pytest.approx(min(losses))


def test_training_is_reproducible(series: TrafficSeries, trained) -> None:
    again = train_traffic(series, strict_split(STEPS), _config(), FAST)
    assert model_version(again.model) == model_version(trained.model)


def test_checkpoint_round_trip(tmp_path, series: TrafficSeries, trained) -> None:
    split = strict_split(STEPS)
    path = save_traffic_checkpoint(tmp_path / "traffic.pt", trained, series, split, FAST)
    model, metadata = load_traffic_model(path, series.network)
    assert metadata["version"] == model_version(trained.model)
    assert metadata["sensor_ids"] == list(series.network.sensor_ids)
    assert metadata["data_fingerprint"] == series.fingerprint
    assert metadata["val_metrics"]["val_rmse"] > 0 and metadata["split"]["val"] == [448, 560]
    test = series.rows(split.test)
    np.testing.assert_allclose(window_predictions(model, test, 3)[0],
                               window_predictions(trained.model, test, 3)[0], rtol=1e-6)
    forecaster = TrafficForecaster.from_checkpoint(path, series.network)
    assert forecaster.version == metadata["version"]


def test_stream_and_window_predictions_score_the_same_windows(series: TrafficSeries, trained) -> None:
    split = strict_split(STEPS)
    window, targets = window_predictions(trained.model, series.rows(split.test), 3)
    stream, stream_targets = stream_predictions(trained.model, series, split.test, 3)
    np.testing.assert_array_equal(targets, stream_targets)
    assert window.shape == stream.shape == targets.shape
