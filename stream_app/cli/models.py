"""CLI commands that build models: `train next-action|traffic` and `evaluate next-action|traffic`."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from stream_app.cli.common import console

__all__ = ["train", "evaluate"]

_out = Console()  # results go to stdout; progress and notes to stderr (cli_common.console)
_DATA_HELP = ("foursquare, diginetica, generated (simulated users with known true next-action "
              "distributions), or a JSON-lines/CSV event file (user_id, ts, action[, lat, lon]).")
_VALID_COLUMNS = ("acc@1", "acc@10", "mrr", "nll")


def _job(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn job errors into `Error: ...` and exit status 1; model logs at warning level unless -v."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from stream_app.jobs import JobError

        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # epochs already show in the progress
            logging.getLogger("models").setLevel(logging.WARNING)
        try:
            fn(*args, **kwargs)
        except JobError as exc:
            raise click.ClickException(str(exc)) from exc
    return wrapper


def _options(*decorators: Callable) -> Callable:
    def apply(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


_data_dir = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Folder holding the shared data sets [default: $STREAM_APP_DATA_DIR, else ../shared/data].")
_threads = click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="torch CPU threads [default: torch's own choice].")
_progress = click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
_action_data = _options(
    click.option("--data", required=True, metavar="foursquare|diginetica|generated|FILE", help=_DATA_HELP),
    click.option("--action-field", type=click.Choice(["action", "item_id", "category"]), default="action",
                 show_default=True, help="Event-file field the model predicts (the worker's STREAM_APP_ACTION_FIELD)."),
    click.option("--users", type=click.IntRange(min=1), default=None,
                 help="Generated data: simulated users [default: 300]."),
    click.option("--events", type=click.IntRange(min=10), default=None,
                 help="Generated data: events in all [default: 30000]."),
    click.option("--data-seed", type=int, default=None, help="Generated data: generator seed [default: 0]."),
    _data_dir,
)
_action_training = _options(
    click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epoch budget [default: the data set's recipe]."),
    click.option("--patience", type=click.IntRange(min=1), default=None,
                 help="Epochs without a better validation MRR before stopping [default: the recipe's]."),
    click.option("--lr", type=float, default=None, help="Adam learning rate [default: the recipe's]."),
    click.option("--hidden-dim", type=click.IntRange(min=1), default=None, help="GRU hidden size [default: the recipe's]."),
    click.option("--seed", type=int, default=0, show_default=True, help="Training seed (same seed, same model)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="auto = the GPU when torch sees one."),
    _threads, _progress,
)
_traffic_training = _options(
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
    _data_dir, _threads, _progress,
)


@click.group()
def train() -> None:
    """Train a model and write a checkpoint that `stream-app worker` serves."""


@click.group()
def evaluate() -> None:
    """Score a model against baselines on the same test split (terminal, JSON, markdown)."""


@train.command("next-action")
@_action_data
@_action_training
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write.")
@_job
def train_next_action_command(out: Path, **options: Any) -> None:
    """Train the next-action GRU on events; early stopping on the validation targets.

    Example: stream-app train next-action --data generated --out next-action.pt
    """
    from models.next_action.datasets import Split
    from models.next_action.training import save_next_action
    from stream_app.jobs import train_actions

    data, device = _action_data_and_device(options)
    started = time.monotonic()
    model, metadata = train_actions(data, **_training_args(options, device))
    path = save_next_action(out, model, metadata)
    history = [h for h in metadata.get("selection_history", metadata["history"]) if h["epoch"] > 0]
    rows = [("model", f"{metadata['version']}  (best epoch {metadata['best_epoch']} of {len(history)} run)"),
            ("data", f"{data.dataset.name}: {data.dataset.n_targets(Split.TRAIN)} training, "
                     f"{data.dataset.n_targets(Split.VALID)} validation, {data.dataset.n_targets(Split.TEST)} test targets"),
            ("validation", "  ".join(f"{k} {metadata['validation'][k]:.4f}" for k in _VALID_COLUMNS
                                     if k in metadata["validation"]) or "none (no validation targets)"),
            ("device / time", f"{device}, {time.monotonic() - started:.0f} s"),
            ("checkpoint", str(path))]
    env = f"STREAM_APP_CHECKPOINT={path}"
    if data.action_field != "action":
        env += f" STREAM_APP_ACTION_FIELD={data.action_field}"
    _summary("Trained next-action model", rows, f"{env} stream-app worker")


@train.command("traffic")
@_traffic_training
@click.option("--protocol", type=click.Choice(["strict", "tgcn"]), default="strict", show_default=True,
              help="strict: train on 64 %, stop early on the next 16 %; tgcn: then refit on 80 % for the epochs chosen.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write.")
@_job
def train_traffic_command(out: Path, protocol: str, data: str, data_dir: Path | None, threads: int | None,
                          progress: bool, **hyper: Any) -> None:
    """Train the traffic graph-GRU on Los-loop (CPU).

    Example: stream-app train traffic --protocol tgcn --out traffic.pt
    """
    from models.traffic.evaluation import format_validation
    from stream_app.jobs import load_traffic_series, train_traffic_models

    _set_threads(threads)
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
    _summary("Trained traffic model", rows,
             f"STREAM_APP_TRAFFIC_CHECKPOINT={out} STREAM_APP_NETWORKS=los-loop={folder}/los_adj.csv:"
             f"{folder}/los_speed.csv stream-app worker")


@evaluate.command("next-action")
@_action_data
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint to score [default: train one now with the options below].")
@_action_training
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a markdown table here.")
@_job
def evaluate_next_action_command(checkpoint: Path | None, json_out: Path | None, markdown_out: Path | None,
                                 **options: Any) -> None:
    """Acc@1/5/10/20, MRR and NLL of the model, popularity, first-order Markov, user frequency and
    their mix on the same test targets (generated data: also the true distribution, the ceiling).

    Example: stream-app evaluate next-action --data generated --json-out metrics.json
    """
    from stream_app.jobs import evaluate_actions, load_checkpoint_for, train_actions

    data, device = _action_data_and_device(options)
    if checkpoint is None:
        model, metadata = train_actions(data, **_training_args(options, device))
    else:
        model, metadata = load_checkpoint_for(checkpoint, device)
        if metadata.get("data_fingerprint") != data.dataset.fingerprint:
            console.print(f"[yellow]note: {checkpoint} was trained on other data "
                          f"({metadata.get('data', {}).get('name', 'unknown')}); scoring it on {data.dataset.name}[/]")
    report = evaluate_actions(data, model, metadata, device=device, checkpoint=str(checkpoint) if checkpoint else None)
    _action_table(report)
    _write(json_out, markdown_out, report.as_json(), report.markdown())


@evaluate.command("traffic")
@_traffic_training
@click.option("--checkpoint", "checkpoints", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Checkpoint to score (repeatable) [default: train under both protocols now].")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write markdown tables here.")
@_job
def evaluate_traffic_command(checkpoints: tuple[Path, ...], json_out: Path | None, markdown_out: Path | None,
                             data: str, data_dir: Path | None, threads: int | None, progress: bool,
                             **hyper: Any) -> None:
    """RMSE, MAE, MAPE and Accuracy at 15/30/45/60 min of the graph-GRU (strict and T-GCN protocols)
    against persistence, time-of-day average and window mean, on T-GCN's test windows.

    Example: stream-app evaluate traffic --checkpoint traffic.pt --markdown-out traffic.md
    """
    from models.traffic.evaluation import traffic_report
    from stream_app.jobs import load_traffic_checkpoint, load_traffic_series, train_traffic_models

    _set_threads(threads)
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
    _write(json_out, markdown_out, report.as_json(), report.markdown())


def series_folder(data_dir: Path | None) -> Path:
    """The Los-loop folder the traffic commands read."""
    from models.paths import shared_data_dir

    return (data_dir or shared_data_dir()) / "los-loop"


def _action_data_and_device(options: dict[str, Any]) -> tuple[Any, str]:
    from simulation.users import BehaviorConfig
    from stream_app.jobs import GENERATED_DEFAULT, load_action_data, resolve_device

    _set_threads(options.get("threads"))
    device = resolve_device(options["device"])
    knobs = {"n_users": options.pop("users"), "n_events": options.pop("events"), "seed": options.pop("data_seed")}
    given = {k: v for k, v in knobs.items() if v is not None}
    generated = BehaviorConfig(**{**{"n_users": GENERATED_DEFAULT.n_users, "n_events": GENERATED_DEFAULT.n_events,
                                     "seed": GENERATED_DEFAULT.seed}, **given}) if given else None
    with console.status(f"Loading {options['data']}..."):
        data = load_action_data(options["data"], data_dir=options.pop("data_dir"), action_field=options["action_field"],
                                generated=generated)
    return data, device


def _training_args(options: dict[str, Any], device: str) -> dict[str, Any]:
    return {"epochs": options["epochs"], "patience": options["patience"], "lr": options["lr"],
            "hidden_dim": options["hidden_dim"], "seed": options["seed"], "device": device,
            "progress": options["progress"]}


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _summary(title: str, rows: list[tuple[str, str]], serve: str) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    _out.print(f"[bold green]{title}[/]")
    _out.print(grid)
    _out.print("Serve it:")
    _out.print(f"  {serve}", markup=False, highlight=False, soft_wrap=True)


def _action_table(report: Any) -> None:
    from stream_app.jobs import CEILING, COLUMNS, MODEL_NAME

    table = Table(title=f"Next action on {report.data}: test split, {report.n_targets} targets", title_justify="left")
    table.add_column("method")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for method, values in report.result.metrics.items():
        style = "bold" if method == MODEL_NAME else "dim" if method == CEILING else None
        table.add_row(method, *(_cell(values.get(c, math.nan)) for c in COLUMNS), style=style)
    _out.print(table)
    gaps = Table(title=f"{MODEL_NAME} minus each method, 95 % paired bootstrap interval", title_justify="left")
    gaps.add_column("method")
    gaps.add_column("acc@1", justify="right")
    gaps.add_column("mrr", justify="right")
    for other, by_metric in report.gaps.items():
        gaps.add_row(other, *(f"{d:+.3f} [{low:+.3f}, {high:+.3f}]" for d, low, high in
                              (by_metric["acc@1"], by_metric["mrr"])))
    _out.print(gaps)


def _traffic_tables(report: Any) -> None:
    from models.traffic.data import EVAL_HORIZONS
    from models.traffic.evaluation import METRICS

    for key, title, digits in METRICS:
        table = Table(title=f"{title} on the test windows, steps 1..h scored", title_justify="left")
        table.add_column("method")
        for horizon in EVAL_HORIZONS:
            table.add_column(f"{horizon * report.step_minutes} min", justify="right")
        for method, by_horizon in report.scores.items():
            table.add_row(method, *(_cell(by_horizon[h][key], digits) for h in EVAL_HORIZONS),
                          style="bold" if method.startswith("graph-GRU") else None)
        _out.print(table)


def _cell(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _write(json_out: Path | None, markdown_out: Path | None, document: dict[str, Any], markdown: str) -> None:
    for path, text in ((json_out, json.dumps(document, indent=2)), (markdown_out, markdown)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            console.print(f"wrote {path}")
