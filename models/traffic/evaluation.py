"""Traffic evaluation on the T-GCN test split: the model, the baselines and the served mix, per horizon.

The test split is T-GCN's (the last 20 % of rows) under both protocols; each horizon of ``h``
steps is scored on all of steps 1..h of every T-GCN window (see :mod:`models.traffic.data`), on
measured targets only. The seasonal profile behind the hour-of-day and hour-of-week averages, and
behind a model that reads it, is fitted on every row before the test split (serving would have
folded those rows in through its online update). "served" is what the forecaster serves: at each
step the model, or the baseline it chose on validation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.traffic.data import (
    EVAL_HORIZONS,
    INPUT_STEPS,
    MAPE_FLOOR,
    TrafficSeries,
    forecast_metrics,
    forecast_windows,
    tgcn_split,
)
from models.traffic.inputs import model_inputs
from models.traffic.model import TrafficGRU
from models.traffic.profile import SeasonalProfile
from models.traffic.scoring import MODEL, baseline_window_forecasts, model_window_forecasts
from models.traffic.training import TrainResult, fit_profile, stream_predictions

__all__ = ["METRICS", "BASELINES", "Scores", "TrafficReport", "ModelUnderTest", "baseline_scores", "model_scores",
           "traffic_report", "format_validation", "markdown_tables", "scores_as_json", "test_profile"]

logger = logging.getLogger(__name__)

# (key, title, decimals) of each reported metric.
METRICS = (("rmse", "RMSE", 4), ("mae", "MAE", 4), ("mape", "MAPE (%)", 2), ("accuracy", "Accuracy", 4))
BASELINES = {"persistence": "persistence", "hour-of-day": "hour-of-day average",
             "hour-of-week": "hour-of-week average", "window-mean": "window mean (T-GCN HA)"}
Scores = dict[str, dict[int, dict[str, float]]]  # method -> horizon (steps) -> metric -> value


@dataclass(frozen=True, eq=False)
class ModelUnderTest:
    """A trained model, with what serving adds: per model horizon, ``model`` or the baseline served."""

    model: TrafficGRU
    sources: tuple[str, ...] | None = None
    info: dict[str, Any] | None = None


def test_profile(series: TrafficSeries) -> SeasonalProfile:
    """The profile of every row before the test split."""
    return fit_profile(series, slice(0, tgcn_split(series.n_steps).test.start))


def baseline_scores(series: TrafficSeries, horizons: tuple[int, ...] = EVAL_HORIZONS,
                    input_steps: int = INPUT_STEPS, profile: SeasonalProfile | None = None) -> Scores:
    """Persistence, hour-of-day and hour-of-week averages and the input-window mean on the test windows."""
    profile = profile if profile is not None else test_profile(series)
    scores: Scores = {title: {} for title in BASELINES.values()}
    for horizon in horizons:
        forecasts, targets, mask = _test_windows(series, horizon, input_steps, profile)
        for source, title in BASELINES.items():
            scores[title][horizon] = _metrics(targets, forecasts[source], mask, series)
    return scores


def model_scores(model: TrafficGRU | TrainResult | ModelUnderTest, series: TrafficSeries, label: str, *,
                 horizons: tuple[int, ...] = EVAL_HORIZONS, input_steps: int = INPUT_STEPS,
                 profile: SeasonalProfile | None = None) -> Scores:
    """The model's scores on the test windows: "window" (zero state, the input steps only:
    T-GCN-comparable), "stream" (state carried from the first row, as the worker runs it) and,
    when some horizon serves a baseline, "served" (the window forecasts with those horizons
    replaced)."""
    under_test = _under_test(model)
    net = under_test.model
    profile = profile if profile is not None else test_profile(series)
    test_part = tgcn_split(series.n_steps).test
    scores: Scores = {f"{label}, window": {}, f"{label}, stream": {}}
    serves_baseline = under_test.sources is not None and any(s != MODEL for s in under_test.sources)
    if serves_baseline:
        scores[f"{label}, served"] = {}
    for horizon in horizons:
        forecasts, targets, mask = _test_windows(series, horizon, input_steps, profile, under_test)
        scores[f"{label}, window"][horizon] = _metrics(targets, forecasts[MODEL], mask, series)
        if serves_baseline:
            scores[f"{label}, served"][horizon] = _metrics(targets, forecasts["served"], mask, series)
        predictions, stream_targets = stream_predictions(net, series, test_part, horizon, input_steps, profile)
        scores[f"{label}, stream"][horizon] = _metrics(stream_targets, predictions, mask, series)
    return scores


def _under_test(model: TrafficGRU | TrainResult | ModelUnderTest) -> ModelUnderTest:
    if isinstance(model, ModelUnderTest):
        return model
    if isinstance(model, TrainResult):
        return ModelUnderTest(model.model, tuple(model.sources) if model.sources else None)
    return ModelUnderTest(model)


def _test_windows(series: TrafficSeries, horizon: int, input_steps: int, profile: SeasonalProfile,
                  under_test: ModelUnderTest | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Forecasts [windows, horizon, sensors] of the baselines (and of the model and the served mix),
    the targets and their measured mask, for steps 1..horizon of the test windows."""
    test = series.rows(tgcn_split(series.n_steps).test)
    starts, targets = forecast_windows(test.speeds, horizon, input_steps)
    _, mask = forecast_windows(test.mask, horizon, input_steps)
    steps = tuple(range(1, horizon + 1))
    inputs = model_inputs(test, steps, profile)
    by_step = baseline_window_forecasts(inputs, test, profile, starts, input_steps)
    if under_test is not None:
        net = under_test.model
        model_inputs_ = model_inputs(test, net.config.horizons, profile if net.config.use_profile else None)
        outputs = model_window_forecasts(net, model_inputs_, starts, input_steps)
        columns = [net.config.horizons.index(k) for k in steps]
        by_step[MODEL] = outputs[..., columns]
        sources = under_test.sources or tuple(MODEL for _ in net.config.horizons)
        chosen = [sources[c] for c in columns]
        by_step["served"] = np.stack([by_step[s][..., i] for i, s in enumerate(chosen)], axis=-1)
    return {k: v.transpose(0, 2, 1) for k, v in by_step.items()}, targets, mask


def _metrics(targets: np.ndarray, predictions: np.ndarray, mask: np.ndarray, series: TrafficSeries) -> dict[str, float]:
    floor = MAPE_FLOOR if series.kind == "speed" else 0.5
    return forecast_metrics(targets, predictions, mask=mask, mape_floor=floor)


def format_validation(val_metrics: dict[str, float] | None) -> str:
    """Validation RMSE/MAE over every model horizon (nan without validation)."""
    metrics = val_metrics or {}
    return f"RMSE {metrics.get('val_rmse', float('nan')):.4f} MAE {metrics.get('val_mae', float('nan')):.4f}"


def markdown_tables(scores: Scores, step_minutes: float, horizons: tuple[int, ...] = EVAL_HORIZONS,
                    unit: str = "mph") -> str:
    """One markdown table per metric: methods down, horizons across (each table after a blank
    line, its title and another blank line)."""
    header = " | ".join(f"{_minutes(h * step_minutes)} min" for h in horizons)
    lines: list[str] = []
    for key, title, digits in METRICS:
        shown = f"{title} ({unit})" if key in ("rmse", "mae") and unit else title
        lines += ["", f"{shown}, all steps up to the horizon scored (T-GCN style)", "",
                  f"| method | {header} |", "|---|" + "---:|" * len(horizons)]
        for method, by_horizon in scores.items():
            cells = " | ".join(f"{by_horizon[h][key]:.{digits}f}" for h in horizons)
            lines.append(f"| {method} | {cells} |")
    return "\n".join(lines)


def scores_as_json(scores: Scores, step_minutes: float) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{method: {"15 min": {metric: value}}}`` with NaN as None (plain JSON)."""
    return {method: {f"{_minutes(h * step_minutes)} min": {k: (None if math.isnan(v) else v)
                                                            for k, v in values.items()}
                     for h, values in by_horizon.items()}
            for method, by_horizon in scores.items()}


def _minutes(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True, eq=False)
class TrafficReport:
    """Scores of the baselines and the models on the T-GCN test windows, per horizon."""

    data: str
    scores: Scores
    models: dict[str, dict[str, Any]]  # label -> version, protocol, checkpoint, sources
    step_minutes: float
    horizons: tuple[int, ...] = EVAL_HORIZONS
    unit: str = "mph"

    def as_json(self) -> dict[str, Any]:
        return {"task": "traffic", "data": self.data, "split": "test: the last 20 % of steps (T-GCN)",
                "horizons": [f"{_minutes(h * self.step_minutes)} min" for h in self.horizons],
                "unit": self.unit, "models": self.models, "scores": scores_as_json(self.scores, self.step_minutes)}

    def markdown(self) -> str:
        models = "; ".join(f"{label}: {info.get('version')}" for label, info in self.models.items()) or "none"
        return (f"Traffic on {self.data}: T-GCN test split (the last 20 % of steps); models {models}\n"
                + markdown_tables(self.scores, self.step_minutes, self.horizons, self.unit) + "\n")


def traffic_report(series: TrafficSeries, models: dict[str, tuple[TrafficGRU | ModelUnderTest, dict[str, Any]]],
                   data: str = "los-loop", *, horizons: tuple[int, ...] = EVAL_HORIZONS,
                   input_steps: int = INPUT_STEPS) -> TrafficReport:
    """The baselines, then each labelled model (window, stream, served), on the T-GCN test windows.
    ``models``: label -> (model, description stored in the report)."""
    profile = test_profile(series)
    scores = baseline_scores(series, horizons, input_steps, profile)
    for label, (model, _) in models.items():
        scores.update(model_scores(model, series, label, horizons=horizons, input_steps=input_steps,
                                   profile=profile))
    unit = series.unit or ("mph" if data == "los-loop" else "")
    return TrafficReport(data, scores, {label: info for label, (_, info) in models.items()},
                         series.step_ms / 60_000, horizons, unit)
