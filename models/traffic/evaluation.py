"""Traffic evaluation on the T-GCN test split: the model and the baselines scored per horizon, and tables.

The test split is T-GCN's (the last 20 % of steps) under both protocols; each horizon of ``h``
steps is scored on all of steps 1..h of every T-GCN window (see :mod:`models.traffic.data`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.traffic.baselines import TimeOfDayAverage, persistence_forecast, window_mean_forecast
from models.traffic.model import TrafficGRU
from models.traffic.data import (EVAL_HORIZONS, INPUT_STEPS, TrafficSeries, forecast_metrics,
                                 forecast_windows, tgcn_split)
from models.traffic.training import TrainResult, stream_predictions, window_predictions

__all__ = ["METRICS", "BASELINES", "Scores", "TrafficReport", "baseline_scores", "model_scores",
           "traffic_report", "format_validation", "markdown_tables", "scores_as_json"]

logger = logging.getLogger(__name__)

# (key, title, decimals) of each reported metric.
METRICS = (("rmse", "RMSE (mph)", 4), ("mae", "MAE (mph)", 4), ("mape", "MAPE (%)", 2),
           ("accuracy", "Accuracy", 4))
BASELINES = ("persistence", "time-of-day average", "window mean (T-GCN HA)")
Scores = dict[str, dict[int, dict[str, float]]]  # method -> horizon (steps) -> metric -> value


def baseline_scores(series: TrafficSeries) -> Scores:
    """Persistence, input-window mean and time-of-day average (fitted on the first 80 %) on the
    test windows."""
    split = tgcn_split(series.n_steps)
    test = series.rows(split.test)
    profile = TimeOfDayAverage(86_400_000 // series.step_ms).fit(
        series.speeds[split.train], series.rows(split.train).slot_of_day())
    scores: Scores = {name: {} for name in BASELINES}
    for horizon in EVAL_HORIZONS:
        starts, targets = forecast_windows(test.speeds, horizon)
        inputs = test.speeds[starts[:, None] + np.arange(INPUT_STEPS)]
        target_slots = test.slot_of_day()[starts[:, None] + INPUT_STEPS + np.arange(horizon)]
        forecasts = {"persistence": persistence_forecast(inputs, horizon),
                     "time-of-day average": profile.forecast(target_slots),
                     "window mean (T-GCN HA)": window_mean_forecast(inputs, horizon)}
        for name, forecast in forecasts.items():
            scores[name][horizon] = forecast_metrics(targets, forecast)
    return scores


def model_scores(model: TrafficGRU | TrainResult, series: TrafficSeries, label: str) -> Scores:
    """The model's scores on the test windows, twice: "window" (zero state, the 12 input steps:
    T-GCN-comparable) and "stream" (state carried from the first row, as the worker runs it)."""
    model = model.model if isinstance(model, TrainResult) else model
    test_part = tgcn_split(series.n_steps).test
    scores: Scores = {f"{label}, window": {}, f"{label}, stream": {}}
    for horizon in EVAL_HORIZONS:
        predictions, targets = window_predictions(model, series.rows(test_part), horizon)
        scores[f"{label}, window"][horizon] = forecast_metrics(targets, predictions)
        predictions, targets = stream_predictions(model, series, test_part, horizon)
        scores[f"{label}, stream"][horizon] = forecast_metrics(targets, predictions)
    return scores


def format_validation(val_metrics: dict[str, float] | None) -> str:
    """Validation RMSE/MAE over every model horizon (nan without validation)."""
    metrics = val_metrics or {}
    return f"RMSE {metrics.get('val_rmse', float('nan')):.4f} MAE {metrics.get('val_mae', float('nan')):.4f}"


def markdown_tables(scores: Scores, step_minutes: int) -> str:
    """One markdown table per metric: methods down, horizons across (each table after a blank
    line, its title and another blank line)."""
    header = " | ".join(f"{h * step_minutes} min" for h in EVAL_HORIZONS)
    lines: list[str] = []
    for key, title, digits in METRICS:
        lines += ["", f"{title}, all steps up to the horizon scored (T-GCN style)", "",
                  f"| method | {header} |", "|---|" + "---:|" * len(EVAL_HORIZONS)]
        for method, by_horizon in scores.items():
            cells = " | ".join(f"{by_horizon[h][key]:.{digits}f}" for h in EVAL_HORIZONS)
            lines.append(f"| {method} | {cells} |")
    return "\n".join(lines)


def scores_as_json(scores: Scores, step_minutes: int) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{method: {"15 min": {metric: value}}}`` with NaN as None (plain JSON)."""
    return {method: {f"{h * step_minutes} min": {k: (None if math.isnan(v) else v) for k, v in values.items()}
                     for h, values in by_horizon.items()}
            for method, by_horizon in scores.items()}


@dataclass(frozen=True, eq=False)
class TrafficReport:
    """Scores of the baselines and the models on the T-GCN test windows, per horizon."""

    data: str
    scores: Scores
    models: dict[str, dict[str, Any]]  # label -> version, protocol, checkpoint
    step_minutes: int

    def as_json(self) -> dict[str, Any]:
        return {"task": "traffic", "data": self.data, "split": "test: the last 20 % of steps (T-GCN)",
                "horizons": [f"{h * self.step_minutes} min" for h in EVAL_HORIZONS], "models": self.models,
                "scores": scores_as_json(self.scores, self.step_minutes)}

    def markdown(self) -> str:
        models = "; ".join(f"{label}: {info['version']}" for label, info in self.models.items()) or "none"
        return (f"Traffic on {self.data}: T-GCN test split (the last 20 % of steps); models {models}\n"
                + markdown_tables(self.scores, self.step_minutes) + "\n")


def traffic_report(series: TrafficSeries, models: dict[str, tuple[TrafficGRU, dict[str, Any]]],
                   data: str = "los-loop") -> TrafficReport:
    """The baselines, then each labelled model (window and stream), on the T-GCN test windows.
    ``models``: label -> (model, description stored in the report)."""
    scores = baseline_scores(series)
    for label, (model, _) in models.items():
        scores.update(model_scores(model, series, label))
    return TrafficReport(data, scores, {label: info for label, (_, info) in models.items()},
                         series.step_ms // 60_000)
