"""The model and the simple baselines scored per horizon on the same windows, and the choice of what
to serve at each horizon.

Windows are T-GCN's (see :mod:`models.traffic.data`): ``input_steps`` rows of one part, forecasts
read after the last input row. Sources:

- ``model``: the graph-GRU from a zero state over the window;
- ``persistence``: the last input value;
- ``hour-of-day`` / ``hour-of-week``: the profile's plain slot means at the target time;
- ``window-mean``: the mean of the window's inputs (T-GCN's "HA").

Only measured targets are scored. The serving choice per horizon is the model where its
validation error is lower than every baseline's, else the best baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.exceptions import ModelError
from models.traffic.data import TrafficSeries
from models.traffic.inputs import ModelInputs
from models.traffic.model import TrafficGRU
from models.traffic.profile import SeasonalProfile

__all__ = ["SOURCES", "BASELINE_SOURCES", "MODEL", "window_starts", "model_window_forecasts",
           "baseline_window_forecasts", "window_targets", "per_horizon_scores", "choose_sources", "Scores"]

MODEL = "model"
BASELINE_SOURCES = ("persistence", "hour-of-day", "hour-of-week", "window-mean")
SOURCES = (MODEL, *BASELINE_SOURCES)
Scores = dict[str, dict[str, list[float]]]  # source -> metric -> value per model horizon


def window_starts(part: slice, n_steps: int, input_steps: int, horizon: int) -> np.ndarray:
    """Absolute first input rows of the T-GCN windows of ``part`` (targets inside the part)."""
    start, stop, _ = part.indices(n_steps)
    count = stop - start - input_steps - horizon
    if count <= 0:
        raise ModelError(f"{stop - start} rows hold no window of {input_steps} inputs and {horizon} targets; "
                         "give more data or fewer input steps")
    return start + np.arange(count)


def model_window_forecasts(model: TrafficGRU, inputs: ModelInputs, starts: np.ndarray, input_steps: int,
                           batch_size: int = 256) -> np.ndarray:
    """[windows, sensors, horizons] the model's forecasts after ``input_steps`` rows from each start."""
    outputs = []
    model.eval()
    with torch.inference_mode():
        for batch in np.array_split(starts, max(1, math.ceil(len(starts) / batch_size))):
            rows = torch.from_numpy(batch)[:, None] + torch.arange(input_steps)[None, :]
            data = inputs.gather(rows, with_targets=False)
            predictions, _ = model(data.values, **data.model_kwargs(model.config.use_time_features))
            outputs.append(predictions[:, -1].numpy())
    return np.concatenate(outputs)


def baseline_window_forecasts(inputs: ModelInputs, series: TrafficSeries, profile: SeasonalProfile,
                              starts: np.ndarray, input_steps: int) -> dict[str, np.ndarray]:
    """Each baseline's [windows, sensors, horizons] forecasts for the same windows."""
    horizons = np.asarray(inputs.horizons)
    rows = starts[:, None] + np.arange(input_steps)[None, :]
    window = inputs.values.numpy()[rows]  # [windows, time, sensors]
    last = rows[:, -1]
    local = series.local_ms(int(horizons.max()))[last[:, None] + horizons[None, :]]  # [windows, horizons]
    width = len(horizons)
    return {"persistence": np.repeat(window[:, -1, :, None], width, axis=2),
            "hour-of-day": profile.hour_of_day(local).transpose(0, 2, 1),
            "hour-of-week": profile.hour_of_week(local).transpose(0, 2, 1),
            "window-mean": np.repeat(window.mean(axis=1)[..., None], width, axis=2)}


def window_targets(inputs: ModelInputs, starts: np.ndarray, input_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets and their measured mask, [windows, sensors, horizons]."""
    last = torch.from_numpy(starts + input_steps - 1)[:, None]
    batch = inputs.gather(last)
    return batch.targets[:, 0].numpy(), batch.target_mask[:, 0].numpy()


def per_horizon_scores(forecasts: dict[str, np.ndarray], targets: np.ndarray, mask: np.ndarray) -> Scores:
    """RMSE and MAE of each source at each horizon (measured targets only)."""
    scores: Scores = {}
    counted = mask.sum(axis=(0, 1))
    for source, forecast in forecasts.items():
        error = np.where(mask, forecast.astype(np.float64) - targets, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rmse = np.sqrt(np.square(error).sum(axis=(0, 1)) / counted)
            mae = np.abs(error).sum(axis=(0, 1)) / counted
        scores[source] = {"rmse": [float(v) for v in rmse], "mae": [float(v) for v in mae]}
    return scores


def choose_sources(scores: Scores, metric: str = "rmse") -> list[str]:
    """Per horizon: ``model`` where it beats every baseline on ``metric``, else the best baseline."""
    if MODEL not in scores:
        raise ModelError("validation scores lack the model's")
    chosen = []
    for h, model_error in enumerate(scores[MODEL][metric]):
        baselines = {s: scores[s][metric][h] for s in BASELINE_SOURCES if s in scores}
        best = min(baselines, key=lambda s: _finite(baselines[s]), default=None)
        if best is None or _finite(model_error) < _finite(baselines[best]):
            chosen.append(MODEL)
        else:
            chosen.append(best)
    return chosen


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf
