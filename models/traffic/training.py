"""Training and evaluation of the traffic graph-GRU, always through its stateful step path.

Training runs the model from a zero state over chunks of ``chunk_steps`` consecutive rows
(truncated back-propagation through time) and scores the forecast made at every position, so it
learns to forecast from 1 .. chunk_steps steps of history: the T-GCN-comparable evaluation (zero
state, 12 input steps, forecast from the last) and the long-running stream are both in reach.
A few inputs are replaced by the previous fed value with their observed flag set to 0, as the
streaming forecaster does when a sensor is missing. Early stopping watches the validation loss of
the T-GCN windows of the validation split; nothing looks at the test split.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from models.checkpoint import save_checkpoint
from models.exceptions import ModelError
from models.traffic.model import CHECKPOINT_KIND, TrafficConfig, TrafficGRU
from models.traffic.data import INPUT_STEPS, Split, TrafficSeries, forecast_metrics, forecast_windows

__all__ = ["TrainConfig", "TrainResult", "train_traffic", "window_predictions",
           "stream_predictions", "save_traffic_checkpoint", "model_version"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; ``epochs`` is the budget (the cap under early stopping)."""

    epochs: int = 20
    patience: int = 5  # epochs without a better validation loss before stopping
    stop_after: int | None = None  # end after this epoch (a refit for an epoch count chosen before)
    batch_size: int = 8  # small batches: more updates per CPU minute on a few days of data
    chunk_steps: int = 24
    chunk_stride: int = 4  # rows between chunk starts (each epoch starts at a random offset)
    learning_rate: float = 2e-3
    final_lr_fraction: float = 0.05  # cosine decay of the learning rate over the epoch budget
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mask_rate: float = 0.05  # share of inputs hidden behind the observed flag
    balance_horizons: bool = True  # weight each horizon by 1 / its persistence MSE on training rows
    seed: int = 0
    input_steps: int = INPUT_STEPS  # history of the validation windows
    progress: bool = True


@dataclass
class TrainResult:
    """The trained model (best validation epoch restored) and what happened on the way."""

    model: TrafficGRU
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    val_metrics: dict[str, float] | None = None


def train_traffic(series: TrafficSeries, split: Split, model_config: TrafficConfig,
                  config: TrainConfig = TrainConfig()) -> TrainResult:
    """Train on ``split.train``; early-stop on ``split.val`` or, without one, run all epochs."""
    torch.manual_seed(config.seed)
    model = TrafficGRU(model_config, series.network.adjacency)
    val_rows = series.rows(split.val) if split.val is not None else None
    result = TrainResult(model=model, best_epoch=0)
    best_state = copy.deepcopy(model.state_dict())
    if val_rows is not None:  # epoch 0: the untrained model, which forecasts persistence
        result.history.append({"epoch": 0, **_validate(model, val_rows, config.input_steps)})
    bar = tqdm(total=config.epochs, desc="traffic", unit="epoch", disable=not config.progress)
    for epoch, train_loss in _epochs(model, series.rows(split.train), config):
        record = {"epoch": epoch, "train_loss": train_loss}
        if val_rows is not None:
            record.update(_validate(model, val_rows, config.input_steps))
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
        if _improves(record, result.history):
            best_state, result.best_epoch = copy.deepcopy(model.state_dict()), epoch
        result.history.append(record)
        if _should_stop(epoch, result.best_epoch, config, has_validation=val_rows is not None):
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    if val_rows is not None:
        result.val_metrics = _validate(model, val_rows, config.input_steps)
    return result


def _epochs(model: TrafficGRU, rows: TrafficSeries,
            config: TrainConfig) -> Iterator[tuple[int, float]]:
    """Train epoch after epoch (Adam, cosine learning rate); yields (epoch, mean train loss)."""
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.learning_rate * config.final_lr_fraction)
    for epoch in range(1, config.epochs + 1):
        loss = _train_epoch(model, optimizer, rows, config, rng)
        schedule.step()
        yield epoch, loss


def _improves(record: dict[str, float], history: list[dict[str, float]]) -> bool:
    """Better validation loss than every earlier epoch; without validation, always (last wins)."""
    if "val_loss" not in record:
        return True
    return all(record["val_loss"] < earlier["val_loss"] for earlier in history)


def _should_stop(epoch: int, best_epoch: int, config: TrainConfig, *, has_validation: bool) -> bool:
    """Patience ran out (with validation) or the refit reached ``stop_after``."""
    if has_validation and epoch - best_epoch >= config.patience:
        logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
        return True
    return config.stop_after is not None and epoch >= config.stop_after


def _train_epoch(model: TrafficGRU, optimizer: torch.optim.Optimizer, rows: TrafficSeries,
                 config: TrainConfig, rng: np.random.Generator) -> float:
    """One pass over shuffled chunks of ``rows``; mean scaled MSE."""
    model.train()
    starts = _chunk_starts(rows.n_steps, model.config, config, rng)
    speeds, features = torch.from_numpy(rows.speeds), torch.from_numpy(rows.time_features())
    weights = _horizon_weights(rows.speeds, model.config.horizons, config.balance_horizons)
    scale = model.config.speed_scale
    losses = []
    for batch in np.array_split(starts, max(1, int(np.ceil(len(starts) / config.batch_size)))):
        inputs, observed, feats, targets = _chunk_batch(speeds, features, batch, model.config,
                                                        config, rng)
        predictions, _ = model(inputs, feats if model.config.use_time_features else None,
                               observed=observed)
        loss = torch.mean(((predictions - targets) / scale) ** 2 * weights)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _horizon_weights(speeds: np.ndarray, horizons: tuple[int, ...], balance: bool) -> torch.Tensor:
    """[horizons] loss weights, mean 1: equal, or inverse persistence MSE so that short horizons
    count as much as the long ones, whose errors are larger."""
    if not balance:
        return torch.ones(len(horizons))
    mse = np.array([np.mean((speeds[h:] - speeds[:-h]) ** 2) for h in horizons])
    weights = 1.0 / np.maximum(mse, 1e-6)
    return torch.from_numpy(weights / weights.mean()).float()


def _chunk_starts(n_rows: int, model_config: TrafficConfig, config: TrainConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Shuffled first rows of this epoch's chunks (every target must lie inside ``n_rows``)."""
    last = n_rows - config.chunk_steps - max(model_config.horizons)
    if last < 0:
        raise ModelError(f"{n_rows} training rows are too few for chunks of {config.chunk_steps} "
                         f"steps and horizon {max(model_config.horizons)}")
    starts = np.arange(rng.integers(0, config.chunk_stride), last + 1, config.chunk_stride)
    return rng.permutation(starts)


def _chunk_batch(speeds: torch.Tensor, features: torch.Tensor, starts: np.ndarray,
                 model_config: TrafficConfig, config: TrainConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """Inputs and observed flags [batch, chunk, sensors], features [batch, chunk, 4] and
    targets [batch, chunk, sensors, horizons] of the chunks starting at ``starts``."""
    rows = torch.from_numpy(starts)[:, None] + torch.arange(config.chunk_steps)[None, :]
    inputs, feats = speeds[rows], features[rows]
    horizons = torch.tensor(model_config.horizons)
    targets = speeds[rows[..., None] + horizons].permute(0, 1, 3, 2)
    observed = torch.from_numpy(rng.random(inputs.shape) >= config.mask_rate)
    observed[:, 0] = True
    return _carry_forward(inputs, observed), observed.float(), feats, targets


def _carry_forward(inputs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Replace unobserved inputs [batch, time, sensors] by the previous fed value."""
    fed = inputs.clone()
    for t in range(1, inputs.shape[1]):
        fed[:, t] = torch.where(observed[:, t], inputs[:, t], fed[:, t - 1])
    return fed


def _validate(model: TrafficGRU, rows: TrafficSeries, input_steps: int) -> dict[str, float]:
    """Scaled MSE and mph RMSE/MAE at the model's horizons over the T-GCN windows of ``rows``."""
    horizons = np.asarray(model.config.horizons)
    starts, _ = forecast_windows(rows.speeds, int(horizons.max()), input_steps)
    predictions = _window_outputs(model, rows, starts, input_steps)
    targets = rows.speeds[(starts + input_steps - 1)[:, None] + horizons[None, :]]
    predictions = predictions.transpose(0, 2, 1)
    metrics = forecast_metrics(targets, predictions)
    error = (predictions - targets) / model.config.speed_scale
    return {"val_loss": float(np.mean(error ** 2)), "val_rmse": metrics["rmse"],
            "val_mae": metrics["mae"]}


def window_predictions(model: TrafficGRU, rows: TrafficSeries, horizon: int,
                       input_steps: int = INPUT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """T-GCN-comparable forecasts: per window, ``input_steps`` steps from a zero state.

    Returns predictions and targets [windows, horizon, sensors] for steps 1..horizon.
    """
    columns = _horizon_columns(model.config, horizon)
    starts, targets = forecast_windows(rows.speeds, horizon, input_steps)
    outputs = _window_outputs(model, rows, starts, input_steps)
    return outputs[..., columns].transpose(0, 2, 1), targets


def _window_outputs(model: TrafficGRU, rows: TrafficSeries, starts: np.ndarray,
                    input_steps: int, batch_size: int = 512) -> np.ndarray:
    """Forecasts [windows, sensors, horizons] made after ``input_steps`` rows from each start."""
    speeds, features = torch.from_numpy(rows.speeds), torch.from_numpy(rows.time_features())
    outputs = []
    model.eval()
    with torch.inference_mode():
        for batch in np.array_split(starts, max(1, int(np.ceil(len(starts) / batch_size)))):
            index = torch.from_numpy(batch)[:, None] + torch.arange(input_steps)[None, :]
            feats = features[index] if model.config.use_time_features else None
            predictions, _ = model(speeds[index], feats)
            outputs.append(predictions[:, -1].numpy())
    return np.concatenate(outputs)


def stream_predictions(model: TrafficGRU, series: TrafficSeries, part: slice, horizon: int,
                       input_steps: int = INPUT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Streaming forecasts for the T-GCN windows of ``part``: the model runs over every row from
    the first of ``series`` with its state carried, and each window is scored on the forecast
    made at its last input row (so it has seen all history, not only the window).

    Returns predictions and targets [windows, horizon, sensors].
    """
    columns = _horizon_columns(model.config, horizon)
    start, stop, _ = part.indices(series.n_steps)
    starts, targets = forecast_windows(series.speeds[start:stop], horizon, input_steps)
    model.eval()
    with torch.inference_mode():
        feats = (torch.from_numpy(series.time_features()[:stop])[None]
                 if model.config.use_time_features else None)
        predictions, _ = model(torch.from_numpy(series.speeds[:stop])[None], feats)
    made_at = start + starts + input_steps - 1
    return predictions[0, made_at][..., columns].permute(0, 2, 1).numpy(), targets


def save_traffic_checkpoint(path: str | os.PathLike, result: TrainResult, series: TrafficSeries,
                            split: Split, config: TrainConfig, **extra: Any) -> Path:
    """Checkpoint with the metadata the forecaster and the evaluation need."""
    model = result.model
    metadata = {
        "version": model_version(model), "network": series.network.name,
        "sensor_ids": list(series.network.sensor_ids),
        "network_fingerprint": series.network.fingerprint, "config": model.config.to_dict(),
        "normalization": {"kind": "divide", "speed_scale": model.config.speed_scale},
        "data_fingerprint": series.fingerprint, "best_epoch": result.best_epoch,
        "val_metrics": result.val_metrics, "train_config": asdict(config),
        "split": {name: _slice_bounds(getattr(split, name)) for name in ("train", "val", "test")},
        **extra,
    }
    return save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=model.state_dict(),
                           metadata=metadata)


def model_version(model: TrafficGRU) -> str:
    """``tgru-`` and a short hash of the weights: equal weights, equal version."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"tgru-{digest.hexdigest()[:12]}"


def _horizon_columns(model_config: TrafficConfig, horizon: int) -> list[int]:
    """Output columns of steps 1..horizon; ModelError if the model lacks one."""
    missing = [k for k in range(1, horizon + 1) if k not in model_config.horizons]
    if missing:
        raise ModelError(f"model horizons {model_config.horizons} lack steps {missing} "
                         f"needed to score horizon {horizon}")
    return [model_config.horizons.index(k) for k in range(1, horizon + 1)]


def _slice_bounds(part: slice | None) -> list[int] | None:
    """[start, stop] of a split slice for metadata."""
    return None if part is None else [part.start, part.stop]
