"""`stream-app train traffic` and `evaluate traffic`: Los-loop, or any readings file with its network."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from stream_app.cli.common import console
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

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _horizons(_: click.Context, __: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        minutes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give minutes separated by commas, e.g. 15,30,60") from None
    if not minutes or min(minutes) <= 0:
        raise click.BadParameter(f"{value!r}: give positive minutes, e.g. 15,30,60")
    return minutes


_traffic_data = options(
    click.option("--data", default="los-loop", show_default=True,
                 help="los-loop (the shared data set), or a readings file: CSV or JSON lines with sensor_id, "
                      "ts (epoch ms or ISO-8601; no offset = UTC) and a value column."),
    click.option("--value-field", default=None,
                 help="Value column of the readings [default: value, else speed, else the one flow, count or "
                      "occupancy column]."),
    click.option("--kind", type=click.Choice(["speed", "flow", "count", "occupancy"]), default=None,
                 help="What the values measure [default: a kind column, else the value column's name, else speed]."),
    click.option("--unit", default=None, help="Unit of the values, e.g. mph, veh/h, passengers/h (shown in reports)."),
    click.option("--sensors", type=_FILE, default=None,
                 help="Sensors CSV: sensor_id and optional coordinates (lat,lon or x,y, see --coordinates); its "
                      "order is the model's sensor order."),
    click.option("--coordinates", type=click.Choice(["wgs84", "metres"]), default="wgs84", show_default=True,
                 help="Sensor coordinates: lat,lon in WGS84 degrees, or x,y in projected metres (e.g. UTM)."),
    click.option("--edges", type=_FILE, default=None,
                 help="Edge list CSV: source,target and optional distance (Gaussian kernel exp(-(d/sigma)^2), "
                      "sigma = root mean square of the distances, no threshold) or weight (used as given). Without "
                      "it, sensors with coordinates are linked to their 8 nearest."),
    click.option("--directed/--undirected", default=False, show_default=True,
                 help="Edge list links one way (source reads target) or both ways."),
    click.option("--interval", default=None,
                 help="Sampling interval, e.g. 5min, 1h [default: median spacing of each sensor's readings]."),
    click.option("--timezone", default=None,
                 help="IANA zone of the network, e.g. Europe/Paris: time of day, week and profiles in local "
                      "time, daylight saving included [default: UTC]."),
    click.option("--horizons", callback=_horizons, default=None,
                 help="Forecast horizons in minutes, e.g. 15,30,45,60 [default: those, else 1-4 intervals]."),
    click.option("--network", default=None, help="Network name [default: the readings file's name]."),
    data_dir_option,
)

_traffic_training = options(
    click.option("--time-features/--no-time-features", default=None,
                 help="Feed time of day and day of week [default: on when the training part spans 2 weeks]."),
    click.option("--profile/--no-profile", default=True, show_default=True,
                 help="Model the seasonal profile and forecast on top of it."),
    click.option("--epochs", type=click.IntRange(min=1), default=200, show_default=True,
                 help="Epoch cap; early stopping on validation ends training before it."),
    click.option("--patience", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Epochs without a better validation loss before stopping (the learning rate halves "
                      "after 3)."),
    click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam learning rate (first)."),
    click.option("--hidden-dim", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Hidden units per sensor."),
    click.option("--embedding-dim", type=click.IntRange(min=0), default=8, show_default=True,
                 help="Learned per-sensor embedding size."),
    click.option("--input-steps", type=click.IntRange(min=1), default=12, show_default=True,
                 help="History of the scored windows, in intervals."),
    click.option("--seed", type=int, default=0, show_default=True, help="Training seed."),
    threads_option, progress_option,
)


@train.command("traffic")
@_traffic_data
@_traffic_training
@click.option("--protocol", type=click.Choice(["strict", "tgcn"]), default="strict", show_default=True,
              help="strict: train on 64 %, stop early on the next 16 %; tgcn: then refit on 80 % for the epochs "
                   "chosen.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write.")
@job
def train_traffic_command(out: Path, protocol: str, threads: int | None, progress: bool, input_steps: int,
                          **options: Any) -> None:
    """Train the traffic graph-GRU on Los-loop or on a readings file (CPU).

    Training scores persistence, the hour-of-day and hour-of-week averages and the window mean on
    the validation part; the checkpoint serves, per horizon, the model where it beat them all and
    the best of them where it did not.

    \b
    Examples:
      stream-app train traffic --protocol tgcn --out traffic.pt
      stream-app train traffic --data counts.csv --edges links.csv --sensors stops.csv \\
          --timezone Europe/Paris --horizons 60,120,180 --out stops.pt
    """
    from models.traffic.evaluation import format_validation
    from stream_app.jobs.traffic import train_traffic_models, write_network_csv

    set_threads(threads)
    data_options, hyper = _split_options(options)
    data = _load(data_options)
    started = time.monotonic()
    protocols = ("strict", "tgcn") if protocol == "tgcn" else ("strict",)
    trained = train_traffic_models(data, protocols=protocols, progress=progress, input_steps=input_steps,
                                   out={protocol: out}, **hyper)
    _, info = trained[protocol]
    stop = "stopped early on validation" if info["epochs_run"] < hyper["epochs"] else "epoch cap reached"
    epochs = (f"best {info['best_epoch']} of {info['epochs_run']} run ({stop})" if protocol == "strict"
              else f"{info['best_epoch']} (refit on 80 %; chosen by the strict run)")
    unit = data.series.unit or ("mph" if data.name == "los-loop" else "")
    rows = [("model", f"{info['version']}  ({protocol} protocol)"), ("epochs", epochs),
            ("data", f"{data.series.network.n_sensors} sensors, {data.series.n_steps:,} intervals of "
                     f"{data.step_minutes:g} min, {data.series.kind}"),
            ("validation", f"{format_validation(info['validation'])} {unit} (strict validation split, all horizons)"),
            ("time features", "on" if info["time_features"] else "off"),
            ("incidents", f"threshold {info['incidents']['threshold']:.2f} (z, {info['incidents']['direction']}), "
                          f"{info['incidents']['validation_incidents']} raised on validation (budget: one per "
                          "sensor and week)"),
            ("time", f"{time.monotonic() - started:.0f} s on CPU"), ("checkpoint", str(out))]
    _validation_table(info, data.step_minutes, data.horizons)
    if data.name == "los-loop":
        folder = series_folder(options.get("data_dir"))
        files = f"{folder}/los_adj.csv:{folder}/los_speed.csv"
    else:
        adjacency, sensors = write_network_csv(data.series.network, out.parent)
        files = f"{adjacency}:{sensors}"
    window = f" STREAM_APP_SENSOR_WINDOW_S={data.series.step_ms // 1000}" if data.series.step_ms != 300_000 else ""
    summary("Trained traffic model", rows,
            f"STREAM_APP_TRAFFIC_CHECKPOINT={out} STREAM_APP_NETWORKS={data.series.network.name}={files}"
            f"{window} stream-app worker")


@evaluate.command("traffic")
@_traffic_data
@_traffic_training
@click.option("--checkpoint", "checkpoints", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Checkpoint to score (repeatable) [default: train under both protocols now].")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write markdown tables here.")
@job
def evaluate_traffic_command(checkpoints: tuple[Path, ...], json_out: Path | None, markdown_out: Path | None,
                             threads: int | None, progress: bool, input_steps: int, **options: Any) -> None:
    """RMSE, MAE, MAPE and Accuracy per horizon of the graph-GRU (as trained, and as served: the
    baseline at horizons where it won on validation) against persistence, the hour-of-day and
    hour-of-week averages and the window mean, on the test windows (the last 20 %).

    \b
    Examples:
      stream-app evaluate traffic --checkpoint traffic.pt --markdown-out traffic.md
      stream-app evaluate traffic --data counts.csv --edges links.csv --checkpoint stops.pt
    """
    from stream_app.jobs.traffic import evaluate_traffic, load_traffic_checkpoint, train_traffic_models

    set_threads(threads)
    data_options, hyper = _split_options(options)
    data = _load(data_options)
    models: dict[str, tuple[Any, dict[str, Any]]] = {}
    for path in checkpoints:
        model, metadata = load_traffic_checkpoint(path, data.series)
        label = f"graph-GRU {metadata.get('protocol', path.stem)}"
        label = label if label not in models else f"{label} ({path.name})"
        models[label] = (model, {"version": metadata.get("version"), "protocol": metadata.get("protocol"),
                                 "checkpoint": str(path), "sources": metadata.get("sources")})
    if not checkpoints:
        trained = train_traffic_models(data, progress=progress, input_steps=input_steps, **hyper)
        for protocol, (result, info) in trained.items():
            from models.traffic.evaluation import ModelUnderTest

            sources = tuple(info["sources"]) if info["sources"] else None
            models[f"graph-GRU {protocol}"] = (ModelUnderTest(result.model, sources),
                                               {**_plain_info(info), "checkpoint": None})
    report = evaluate_traffic(data, models, input_steps)
    _traffic_tables(report)
    write_reports(json_out, markdown_out, report.as_json(), report.markdown())


_DATA_OPTIONS = ("data", "value_field", "kind", "unit", "sensors", "coordinates", "edges", "directed", "interval",
                 "timezone", "horizons", "network", "data_dir")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data options, training options) of a command's keyword arguments."""
    data = {k: v for k, v in options.items() if k in _DATA_OPTIONS}
    hyper = {k: v for k, v in options.items() if k not in _DATA_OPTIONS}
    return data, hyper


def _load(data_options: dict[str, Any]) -> Any:
    """The data the options name, with what loading did printed (stderr)."""
    from stream_app.jobs.traffic import load_traffic_data

    options = dict(data_options)
    data = load_traffic_data(options.pop("data"), horizons_min=options.pop("horizons"), **options)
    for note in data.notes:
        console.print(f"[dim]note:[/] {note}", highlight=False)
    return data


def _plain_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "validation_scores"}


def series_folder(data_dir: Path | None) -> Path:
    """The Los-loop folder the traffic commands read."""
    from stream_app.jobs import shared_folder

    return shared_folder("los-loop", data_dir)


def _validation_table(info: dict[str, Any], step_minutes: float, horizons: tuple[int, ...]) -> None:
    """Validation RMSE per scored horizon of the model and each baseline, and what is served there."""
    scores, sources = info.get("validation_scores"), info.get("sources")
    if not scores or not sources:
        return
    table = Table(title="Validation RMSE per horizon (lowest wins; served: what the checkpoint serves there)",
                  title_justify="left")
    table.add_column("source")
    for h in horizons:
        table.add_column(f"{h * step_minutes:g} min", justify="right")
    for source, metrics in scores.items():
        table.add_row(source, *(cell(metrics["rmse"][h - 1], 4) for h in horizons),
                      style="bold" if source == "model" else None)
    table.add_row("served", *(sources[h - 1] for h in horizons), style="green")
    out.print(table)


def _traffic_tables(report: Any) -> None:
    from models.traffic.evaluation import METRICS

    for key, title, digits in METRICS:
        unit = f" ({report.unit})" if key in ("rmse", "mae") and report.unit else ""
        table = Table(title=f"{title}{unit} on the test windows, steps 1..h scored", title_justify="left")
        table.add_column("method")
        for horizon in report.horizons:
            table.add_column(f"{horizon * report.step_minutes:g} min", justify="right")
        for method, by_horizon in report.scores.items():
            table.add_row(method, *(cell(by_horizon[h][key], digits) for h in report.horizons),
                          style="bold" if method.startswith("graph-GRU") else None)
        out.print(table)
