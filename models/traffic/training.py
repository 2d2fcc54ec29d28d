"""Training and evaluation of the traffic graph-GRU, always through its stateful step path.

Training runs the model from a zero state over chunks of ``chunk_steps`` consecutive rows
(truncated back-propagation through time) and scores the forecast made at every position, so it
learns to forecast from 1 .. chunk_steps steps of history: the T-GCN-comparable evaluation (zero
state, 12 input steps, forecast from the last) and the long-running stream are both in reach.
A few inputs are replaced by the previous fed value with their observed flag set to 0, as the
streaming forecaster does when a sensor is missing; gaps in the data are flagged the same way and
their targets are not scored.

Budget: early stopping decides. After every epoch the validation windows are scored; the
learning rate halves after ``lr_patience`` epochs without a better validation loss, training
stops after ``patience`` such epochs (or at the ``epochs`` cap) and the best epoch is restored.
A refit without validation replays a learning-rate schedule chosen before (``lr_schedule``).

The seasonal profile is fitted on the training rows (:mod:`models.traffic.profile`); the model
reads it when its config says ``use_profile``, and then starts as the least-squares blend of
persistence and the profile per horizon (fitted on the training rows). At the end the model and the baselines are scored
per horizon on the validation windows (:mod:`models.traffic.scoring`) and the serving choice is
made from those scores; nothing looks at the test split.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from models.checkpoint import save_checkpoint
from models.exceptions import ModelError
from models.traffic.data import INPUT_STEPS, Split, TrafficSeries, forecast_windows
from models.traffic.inputs import ModelInputs, model_inputs
from models.traffic.model import CHECKPOINT_KIND, TrafficConfig, TrafficGRU
from models.traffic.profile import SeasonalProfile, profile_slot_ms
from models.traffic.scoring import (
    MODEL,
    Scores,
    baseline_window_forecasts,
    choose_sources,
    model_window_forecasts,
    per_horizon_scores,
    window_starts,
    window_targets,
)

__all__ = ["TrainConfig", "TrainResult", "train_traffic", "window_predictions", "stream_predictions",
           "save_traffic_checkpoint", "model_version", "fit_profile", "sensor_scales"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; ``epochs`` is only a cap: early stopping on validation decides."""

    epochs: int = 200
    patience: int = 10  # epochs without a better validation loss before stopping
    lr_patience: int = 3  # epochs without a better validation loss before the learning rate halves
    lr_decay: float = 0.5
    min_lr_fraction: float = 0.02  # the learning rate never falls below this share of the first
    lr_schedule: tuple[float, ...] | None = None  # a refit: the learning rate of each epoch, replayed
    stop_after: int | None = None  # end after this epoch (a refit for an epoch count chosen before)
    batch_size: int = 8  # small batches: more updates per CPU minute on a few days of data
    chunk_steps: int = 24
    chunk_stride: int = 4  # rows between chunk starts (each epoch starts at a random offset)
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mask_rate: float = 0.05  # share of inputs hidden behind the observed flag
    balance_horizons: bool = True  # weight each horizon by 1 / its persistence MSE on training rows
    per_sensor_scale: bool = True  # each sensor's inputs divided by its own scale (else speed_scale)
    seed: int = 0
    input_steps: int = INPUT_STEPS  # history of the validation windows
    progress: bool = True


@dataclass
class TrainResult:
    """The trained model (best validation epoch restored), its profile and what happened on the way.

    ``validation_scores``: RMSE/MAE per model horizon of the model and each baseline on the
    validation windows; ``sources``: what to serve per model horizon (``model`` or a baseline).
    """

    model: TrafficGRU
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    val_metrics: dict[str, float] | None = None
    profile: SeasonalProfile | None = None
    validation_scores: Scores | None = None
    sources: list[str] | None = None


def fit_profile(series: TrafficSeries, rows: slice) -> SeasonalProfile:
    """The seasonal profile of ``series``' ``rows`` (slots of :func:`profile_slot_ms`)."""
    part = series.rows(rows)
    return SeasonalProfile.fit(part.speeds, part.mask, part.local_ms(), profile_slot_ms(series.step_ms),
                               step_ms=series.step_ms)


def sensor_scales(values: np.ndarray, mask: np.ndarray) -> npt.NDArray[np.float32]:
    """[sensors] each sensor's 99.5th percentile of |value|, at least 5 % of the network's (never 0)."""
    magnitude = np.where(mask, np.abs(values), np.nan)
    with np.errstate(all="ignore"):
        per_sensor: npt.NDArray[np.float64] | None = (np.nanpercentile(magnitude, 99.5, axis=0)
                                                      if mask.any(axis=0).any() else None)
    overall = float(np.nanpercentile(magnitude, 99.5)) if mask.any() else 1.0
    floor = max(0.05 * overall, 1e-6)
    if per_sensor is None:
        return np.full(values.shape[1], max(overall, floor), dtype=np.float32)
    return np.maximum(np.nan_to_num(per_sensor, nan=floor), floor).astype(np.float32)


def train_traffic(series: TrafficSeries, split: Split, model_config: TrafficConfig,
                  config: TrainConfig = TrainConfig(), profile: SeasonalProfile | None = None) -> TrainResult:
    """Train on ``split.train``; early-stop on ``split.val`` or, without one, run the budget."""
    torch.manual_seed(config.seed)
    model = TrafficGRU(model_config, series.network.adjacency)
    profile = profile if profile is not None else fit_profile(series, split.train)
    train = series.rows(split.train)
    if config.per_sensor_scale:
        model.set_value_scale(sensor_scales(train.speeds, train.mask))
    inputs = model_inputs(series, model_config.horizons, profile if model_config.use_profile else None,
                          fitted_rows=split.train)
    if model_config.use_profile:
        _open_profile_gate(model, inputs, split.train)
    val_starts = (window_starts(split.val, series.n_steps, config.input_steps, max(model_config.horizons))
                  if split.val is not None else None)
    result = TrainResult(model=model, best_epoch=0, profile=profile)
    best_state = copy.deepcopy(model.state_dict())
    if val_starts is not None:  # epoch 0: the untrained model, about persistence
        result.history.append({"epoch": 0, **_validate(model, inputs, val_starts, config.input_steps)})
    bar = tqdm(total=config.epochs, desc="traffic", unit="epoch", disable=not config.progress)
    for epoch, train_loss, lr in _epochs(model, inputs, split.train, config, result.history):
        record = {"epoch": epoch, "train_loss": train_loss, "lr": lr}
        if val_starts is not None:
            record.update(_validate(model, inputs, val_starts, config.input_steps))
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("epoch", "lr")})
        if _improves(record, result.history):
            best_state, result.best_epoch = copy.deepcopy(model.state_dict()), epoch
        result.history.append(record)
        if _should_stop(epoch, result.best_epoch, config, has_validation=val_starts is not None):
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    if val_starts is not None:
        result.val_metrics = _validate(model, inputs, val_starts, config.input_steps)
        result.validation_scores = validation_scores(model, series, inputs, profile, val_starts, config.input_steps)
        result.sources = choose_sources(result.validation_scores)
    return result


def _open_profile_gate(model: TrafficGRU, inputs: ModelInputs, rows: slice) -> None:
    """Start each horizon's profile gate at the least-squares mix of persistence and the profile on
    the training rows, so the untrained model already is the best fixed blend of the two."""
    assert model.profile_gate is not None and inputs.profile is not None
    start, stop, _ = rows.indices(inputs.n_steps)
    values, observed = inputs.values.double(), inputs.observed
    gates = []
    for h in model.config.horizons:
        now, later = slice(start, stop - h), slice(start + h, stop)
        both = observed[now] & observed[later]
        towards = (inputs.profile[later].double() - values[now])[both]
        moved = (values[later] - values[now])[both]
        gain = float((towards * moved).sum() / towards.square().sum().clamp(min=1e-12)) if both.any() else 0.0
        gates.append(min(max(gain, _GATE_RANGE[0]), _GATE_RANGE[1]))
    with torch.no_grad():
        model.profile_gate.bias.copy_(torch.logit(torch.tensor(gates, dtype=model.profile_gate.bias.dtype)))


_GATE_RANGE = (0.02, 0.98)  # initial profile gates stay open enough to learn in both directions


def validation_scores(model: TrafficGRU, series: TrafficSeries, inputs: ModelInputs, profile: SeasonalProfile,
                      starts: np.ndarray, input_steps: int) -> Scores:
    """RMSE/MAE per model horizon of the model and every baseline on the windows at ``starts``."""
    forecasts = {MODEL: model_window_forecasts(model, inputs, starts, input_steps),
                 **baseline_window_forecasts(inputs, series, profile, starts, input_steps)}
    targets, mask = window_targets(inputs, starts, input_steps)
    return per_horizon_scores(forecasts, targets, mask)


def _epochs(model: TrafficGRU, inputs: ModelInputs, rows: slice, config: TrainConfig,
            history: list[dict[str, float]]) -> Iterator[tuple[int, float, float]]:
    """Train epoch after epoch (Adam); yields (epoch, mean train loss, learning rate used)."""
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    weights = _horizon_weights(inputs, rows, model.config.horizons, config.balance_horizons)
    for epoch in range(1, config.epochs + 1):
        lr = _learning_rate(epoch, config, history)
        for group in optimizer.param_groups:
            group["lr"] = lr
        yield epoch, _train_epoch(model, optimizer, inputs, rows, config, rng, weights), lr


def _learning_rate(epoch: int, config: TrainConfig, history: list[dict[str, float]]) -> float:
    """The replayed schedule, else the last rate, halved after ``lr_patience`` epochs without progress."""
    if config.lr_schedule is not None:
        return config.lr_schedule[min(epoch, len(config.lr_schedule)) - 1]
    trained = [record for record in history if "lr" in record]
    if not trained:
        return config.learning_rate
    lr = trained[-1]["lr"]
    scored = [record["val_loss"] for record in history if "val_loss" in record]
    since_best = len(scored) - 1 - int(np.argmin(scored)) if scored else 0
    last_change = next((i for i in range(len(trained) - 1, 0, -1) if trained[i]["lr"] != trained[i - 1]["lr"]), 0)
    if since_best >= config.lr_patience and len(trained) - last_change >= config.lr_patience:
        lr = max(lr * config.lr_decay, config.learning_rate * config.min_lr_fraction)
    return lr


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


def _train_epoch(model: TrafficGRU, optimizer: torch.optim.Optimizer, inputs: ModelInputs, rows: slice,
                 config: TrainConfig, rng: np.random.Generator, weights: torch.Tensor) -> float:
    """One pass over shuffled chunks of ``rows``; mean scaled MSE over measured targets."""
    model.train()
    starts = _chunk_starts(rows, inputs.n_steps, model.config, config, rng)
    scale = model.config.speed_scale
    losses = []
    for batch_starts in np.array_split(starts, max(1, math.ceil(len(starts) / config.batch_size))):
        chunk = torch.from_numpy(batch_starts)[:, None] + torch.arange(config.chunk_steps)[None, :]
        batch = inputs.gather(chunk)
        hidden = torch.from_numpy(rng.random(tuple(batch.values.shape)) < config.mask_rate)
        hidden[:, 0] = False
        observed = batch.observed.bool() & ~hidden
        values = _carry_forward(batch.values, observed)
        kwargs = {**batch.model_kwargs(model.config.use_time_features), "observed": observed.float()}
        predictions, _ = model(values, **kwargs)
        mask = batch.target_mask.float()
        squared = ((predictions - batch.targets) / scale) ** 2 * weights * mask
        loss = squared.sum() / mask.sum().clamp(min=1.0)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _horizon_weights(inputs: ModelInputs, rows: slice, horizons: tuple[int, ...], balance: bool) -> torch.Tensor:
    """[horizons] loss weights, mean 1: equal, or inverse persistence MSE on the training rows so that
    short horizons count as much as the long ones, whose errors are larger."""
    if not balance:
        return torch.ones(len(horizons))
    start, stop, _ = rows.indices(inputs.n_steps)
    values, observed = inputs.values[start:stop].numpy(), inputs.observed[start:stop].numpy()
    mse = []
    for h in horizons:
        both = observed[h:] & observed[:-h]
        error = np.where(both, values[h:] - values[:-h], 0.0)
        mse.append(float(np.square(error).sum() / max(both.sum(), 1)))
    weights = 1.0 / np.maximum(np.array(mse), 1e-6 * max(max(mse), 1e-12))
    return torch.from_numpy(weights / weights.mean()).float()


def _chunk_starts(rows: slice, n_steps: int, model_config: TrafficConfig, config: TrainConfig,
                  rng: np.random.Generator) -> np.ndarray:
    """Shuffled first rows of this epoch's chunks (every target must lie inside ``rows``)."""
    start, stop, _ = rows.indices(n_steps)
    last = stop - config.chunk_steps - max(model_config.horizons)
    if last < start:
        raise ModelError(f"{stop - start} training rows are too few for chunks of {config.chunk_steps} "
                         f"steps and horizon {max(model_config.horizons)}; give more data")
    starts = np.arange(start + rng.integers(0, config.chunk_stride), last + 1, config.chunk_stride)
    return rng.permutation(starts)


def _carry_forward(inputs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Replace unobserved inputs [batch, time, sensors] by the previous fed value."""
    fed = inputs.clone()
    for t in range(1, inputs.shape[1]):
        fed[:, t] = torch.where(observed[:, t], inputs[:, t], fed[:, t - 1])
    return fed


def _validate(model: TrafficGRU, inputs: ModelInputs, starts: np.ndarray, input_steps: int) -> dict[str, float]:
    """Scaled MSE and RMSE/MAE over every model horizon of the windows at ``starts`` (measured targets)."""
    predictions = model_window_forecasts(model, inputs, starts, input_steps)
    targets, mask = window_targets(inputs, starts, input_steps)
    error = np.where(mask, predictions - targets, 0.0)
    counted = max(int(mask.sum()), 1)
    return {"val_loss": float(np.square(error / model.config.speed_scale).sum() / counted),
            "val_rmse": float(np.sqrt(np.square(error).sum() / counted)),
            "val_mae": float(np.abs(error).sum() / counted)}


def window_predictions(model: TrafficGRU, rows: TrafficSeries, horizon: int, input_steps: int = INPUT_STEPS,
                       profile: SeasonalProfile | None = None) -> tuple[np.ndarray, np.ndarray]:
    """T-GCN-comparable forecasts: per window, ``input_steps`` steps from a zero state.

    Returns predictions and targets [windows, horizon, sensors] for steps 1..horizon.
    """
    columns = _horizon_columns(model.config, horizon)
    starts, targets = forecast_windows(rows.speeds, horizon, input_steps)
    inputs = model_inputs(rows, model.config.horizons, _profile_for(model, profile))
    outputs = model_window_forecasts(model, inputs, starts, input_steps)
    return outputs[..., columns].transpose(0, 2, 1), targets


def stream_predictions(model: TrafficGRU, series: TrafficSeries, part: slice, horizon: int,
                       input_steps: int = INPUT_STEPS,
                       profile: SeasonalProfile | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Streaming forecasts for the T-GCN windows of ``part``: the model runs over every row from
    the first of ``series`` with its state carried, and each window is scored on the forecast
    made at its last input row (so it has seen all history, not only the window).

    Returns predictions and targets [windows, horizon, sensors].
    """
    columns = _horizon_columns(model.config, horizon)
    start, stop, _ = part.indices(series.n_steps)
    starts, targets = forecast_windows(series.speeds[start:stop], horizon, input_steps)
    inputs = model_inputs(series.rows(slice(0, stop)), model.config.horizons, _profile_for(model, profile))
    model.eval()
    with torch.inference_mode():
        batch = inputs.gather(torch.arange(stop)[None, :], with_targets=False)
        predictions, _ = model(batch.values, **batch.model_kwargs(model.config.use_time_features))
    made_at = start + starts + input_steps - 1
    return predictions[0, made_at][..., columns].permute(0, 2, 1).numpy(), targets


def _profile_for(model: TrafficGRU, profile: SeasonalProfile | None) -> SeasonalProfile | None:
    if model.config.use_profile and profile is None:
        raise ModelError("this model reads the seasonal profile; pass the profile it was trained with")
    return profile if model.config.use_profile else None


def save_traffic_checkpoint(path: str | os.PathLike[str], result: TrainResult, series: TrafficSeries,
                            split: Split, config: TrainConfig, **extra: Any) -> Path:
    """Checkpoint with the metadata the forecaster and the evaluation need (``extra`` is added as is;
    a refit passes the ``validation_scores`` and ``sources`` of the run that chose its epochs)."""
    model = result.model
    metadata = {
        "version": model_version(model, result.profile), "network": series.network.name,
        "sensor_ids": list(series.network.sensor_ids),
        "network_fingerprint": series.network.fingerprint, "config": model.config.to_dict(),
        "normalization": {"kind": "divide", "speed_scale": model.config.speed_scale, "per_sensor": True},
        "interval_ms": int(series.step_ms), "timezone": series.timezone, "kind": series.kind, "unit": series.unit,
        "input_steps": config.input_steps,
        "data_fingerprint": series.fingerprint, "best_epoch": result.best_epoch,
        "val_metrics": result.val_metrics, "train_config": _plain(asdict(config)),
        "split": {name: _slice_bounds(getattr(split, name)) for name in ("train", "val", "test")},
        "validation_scores": result.validation_scores, "sources": result.sources,
        "profile": _profile_tensors(result.profile),
        **extra,
    }
    return save_checkpoint(path, kind=CHECKPOINT_KIND, state_dict=model.state_dict(), metadata=metadata)


def model_version(model: TrafficGRU, profile: SeasonalProfile | None = None) -> str:
    """``tgru-`` and a short hash of the weights (and the profile it serves with): equal inputs, equal version."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if profile is not None and model.config.use_profile:
        for name, value in sorted(profile.to_arrays().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return f"tgru-{digest.hexdigest()[:12]}"


def _profile_tensors(profile: SeasonalProfile | None) -> dict[str, Any] | None:
    """The profile as tensors and numbers (what ``weights_only`` loading accepts)."""
    if profile is None:
        return None
    return {name: torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
            for name, value in profile.to_arrays().items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists (plain metadata)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


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
