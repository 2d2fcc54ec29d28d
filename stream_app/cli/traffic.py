"""`stream-app train traffic` and `evaluate traffic`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from stream_app.cli.models import (
    cell,
    data_dir_option,
    evaluate,
    job,
    options,
    out,
    progress_option,
    set_threads,
    summary,
    threads_option,
    train,
    write_reports,
)

__all__ = ["series_folder"]


_traffic_training = options(
    click.option("--data", type=click.Choice(["los-loop"]), default="los-loop", show_default=True,
                 help="Road-speed data set (from the shared data folder)."),
    click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Epoch budget."),
    click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
                 help="Epochs without a better validation loss before stopping."),
    click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam learning rate (cosine decay)."),
    click.option("--hidden-dim", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden units per sensor."),
    click.option("--embedding-dim", type=click.IntRange(min=0), default=8, show_default=True,
                 help="Learned per-sensor embedding size."),
    click.option("--seed", type=int, default=0, show_default=True, help="Training seed."),
    data_dir_option, threads_option, progress_option,
)


@train.command("traffic")
@_traffic_training
@click.option("--protocol", type=click.Choice(["strict", "tgcn"]), default="strict", show_default=True,
              help="strict: train on 64 %, stop early on the next 16 %; tgcn: then refit on 80 % for the epochs chosen.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write.")
@job
def train_traffic_command(out: Path, protocol: str, data: str, data_dir: Path | None, threads: int | None,
                          progress: bool, **hyper: Any) -> None:
    """Train the traffic graph-GRU on Los-loop (CPU).

    Example: stream-app train traffic --protocol tgcn --out traffic.pt
    """
    from models.traffic.evaluation import format_validation
    from stream_app.jobs.traffic import load_traffic_series, train_traffic_models

    set_threads(threads)
    series = load_traffic_series(data, data_dir)
    started = time.monotonic()
    protocols = ("strict", "tgcn") if protocol == "tgcn" else ("strict",)
    trained = train_traffic_models(series, protocols=protocols, progress=progress, out={protocol: out}, **hyper)
    _, info = trained[protocol]
    epochs = (f"{info['best_epoch']} (strict run, early stopping)" if protocol == "strict"
              else f"{info['best_epoch']} (refit on 80 %; chosen by the strict run)")
    rows = [("model", f"{info['version']}  ({protocol} protocol)"), ("epochs", epochs),
            ("validation", f"{format_validation(info['validation'])} mph (strict validation split, all horizons)"),
            ("time", f"{time.monotonic() - started:.0f} s on CPU"), ("checkpoint", str(out))]
    folder = series_folder(data_dir)
    summary("Trained traffic model", rows,
             f"STREAM_APP_TRAFFIC_CHECKPOINT={out} STREAM_APP_NETWORKS=los-loop={folder}/los_adj.csv:"
             f"{folder}/los_speed.csv stream-app worker")


@evaluate.command("traffic")
@_traffic_training
@click.option("--checkpoint", "checkpoints", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Checkpoint to score (repeatable) [default: train under both protocols now].")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write markdown tables here.")
@job
def evaluate_traffic_command(checkpoints: tuple[Path, ...], json_out: Path | None, markdown_out: Path | None,
                             data: str, data_dir: Path | None, threads: int | None, progress: bool,
                             **hyper: Any) -> None:
    """RMSE, MAE, MAPE and Accuracy at 15/30/45/60 min of the graph-GRU (strict and T-GCN protocols)
    against persistence, time-of-day average and window mean, on T-GCN's test windows.

    Example: stream-app evaluate traffic --checkpoint traffic.pt --markdown-out traffic.md
    """
    from models.traffic.evaluation import traffic_report
    from stream_app.jobs.traffic import (
        load_traffic_checkpoint,
        load_traffic_series,
        train_traffic_models,
    )

    set_threads(threads)
    series = load_traffic_series(data, data_dir)
    models: dict[str, tuple[Any, dict[str, Any]]] = {}
    if checkpoints:
        for path in checkpoints:
            model, metadata = load_traffic_checkpoint(path, series)
            label = f"graph-GRU {metadata.get('protocol', path.stem)}"
            label = label if label not in models else f"{label} ({path.name})"
            models[label] = (model, {"version": metadata.get("version"), "protocol": metadata.get("protocol"),
                                     "checkpoint": str(path)})
    else:
        for protocol, (result, info) in train_traffic_models(series, progress=progress, **hyper).items():
            models[f"graph-GRU {protocol}"] = (result.model, {**info, "checkpoint": None})
    report = traffic_report(series, models, data)
    _traffic_tables(report)
    write_reports(json_out, markdown_out, report.as_json(), report.markdown())


def series_folder(data_dir: Path | None) -> Path:
    """The Los-loop folder the traffic commands read."""
    from models.paths import shared_data_dir

    return (data_dir or shared_data_dir()) / "los-loop"


def _traffic_tables(report: Any) -> None:
    from models.traffic.data import EVAL_HORIZONS
    from models.traffic.evaluation import METRICS

    for key, title, digits in METRICS:
        table = Table(title=f"{title} on the test windows, steps 1..h scored", title_justify="left")
        table.add_column("method")
        for horizon in EVAL_HORIZONS:
            table.add_column(f"{horizon * report.step_minutes} min", justify="right")
        for method, by_horizon in report.scores.items():
            table.add_row(method, *(cell(by_horizon[h][key], digits) for h in EVAL_HORIZONS),
                          style="bold" if method.startswith("graph-GRU") else None)
        out.print(table)
