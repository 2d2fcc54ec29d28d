"""Traffic jobs behind `stream-app train traffic` and `evaluate traffic`: the graph-GRU on Los-loop
under the strict or the T-GCN protocol, scored with :mod:`models.traffic.evaluation`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.exceptions import CheckpointError, ModelError
from models.traffic.data import (
    EVAL_HORIZONS,
    TrafficSeries,
    load_los_loop,
    strict_split,
    tgcn_split,
)
from models.traffic.forecaster import load_traffic_model
from models.traffic.model import TrafficConfig, TrafficGRU
from models.traffic.training import (
    TrainConfig,
    TrainResult,
    model_version,
    save_traffic_checkpoint,
    train_traffic,
)
from stream_app.jobs import JobError, shared_folder

__all__ = ["load_traffic_series", "train_traffic_models", "load_traffic_checkpoint"]

log = logging.getLogger(__name__)


def load_traffic_series(data: str, data_dir: Path | None = None) -> TrafficSeries:
    """The named traffic data set (only ``los-loop`` so far)."""
    if data != "los-loop":
        raise JobError(f"traffic data {data!r} is unknown; use los-loop")
    folder = shared_folder("los-loop", data_dir)
    try:
        return load_los_loop(folder)
    except ModelError as exc:
        raise JobError(str(exc)) from exc


def train_traffic_models(series: TrafficSeries, *, protocols: tuple[str, ...] = ("strict", "tgcn"),
                         epochs: int = 20, patience: int = 5, lr: float = 2e-3, hidden_dim: int = 64,
                         embedding_dim: int = 8, seed: int = 0, progress: bool = True,
                         out: dict[str, Path] | None = None) -> dict[str, tuple[TrainResult, dict[str, Any]]]:
    """Train under each protocol in ``protocols`` (the benchmark's settings otherwise).

    ``strict``: train on the first 64 % of steps, early stopping on the next 16 %. ``tgcn``: that
    strict run picks the epoch count, then the model is refitted on the first 80 % for that many
    epochs (the strict run is done once for both). Saves ``out[protocol]`` when given. Returns
    {protocol: (result, summary with version, best epoch and the strict run's validation metrics)}.
    """
    unknown = sorted(set(protocols) - {"strict", "tgcn"})
    if unknown or not protocols:
        raise JobError(f"protocols must be strict and/or tgcn, got {list(protocols)}")
    out = out or {}
    train_part = series.speeds[strict_split(series.n_steps).train]
    model_config = TrafficConfig(n_sensors=series.network.n_sensors, hidden_dim=hidden_dim,
                                 horizons=tuple(range(1, max(EVAL_HORIZONS) + 1)),
                                 speed_scale=float(train_part.max()), node_embedding_dim=embedding_dim,
                                 use_time_features=False)
    config = TrainConfig(epochs=epochs, patience=patience, learning_rate=lr, seed=seed, progress=progress)
    split = strict_split(series.n_steps)
    strict = train_traffic(series, split, model_config, config)
    runs = {"strict": (strict, split, config, {"protocol": "strict"})}
    if "tgcn" in protocols:
        refit_config, refit_split = replace(config, stop_after=max(1, strict.best_epoch)), tgcn_split(series.n_steps)
        refit = train_traffic(series, refit_split, model_config, refit_config)
        runs["tgcn"] = (refit, refit_split, refit_config,
                        {"protocol": "tgcn", "strict_val_metrics": strict.val_metrics})
    trained = {}
    for protocol in protocols:
        result, part, used, extra = runs[protocol]
        if protocol in out:
            save_traffic_checkpoint(out[protocol], result, series, part, used, **extra)
        trained[protocol] = (result, {"version": model_version(result.model), "protocol": protocol,
                                      "best_epoch": result.best_epoch, "strict_best_epoch": strict.best_epoch,
                                      "validation": strict.val_metrics or {}})
    return trained


def load_traffic_checkpoint(path: Path, series: TrafficSeries) -> tuple[TrafficGRU, dict[str, Any]]:
    """A traffic checkpoint for ``series``' network; JobError with the reason when unusable."""
    try:
        return load_traffic_model(path, series.network)
    except (CheckpointError, ModelError) as exc:
        raise JobError(str(exc)) from exc
