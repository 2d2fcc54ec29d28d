"""`stream-app train next-action` and `evaluate next-action`."""

from __future__ import annotations

import math
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

__all__: list[str] = []


_DATA_HELP = ("foursquare, diginetica, generated (simulated users with known true next-action "
              "distributions), or a JSON-lines/CSV event file (user_id, ts, action[, lat, lon]).")


_VALID_COLUMNS = ("acc@1", "acc@10", "mrr", "nll")


_action_data = options(
    click.option("--data", required=True, metavar="foursquare|diginetica|generated|FILE", help=_DATA_HELP),
    click.option("--action-field", type=click.Choice(["action", "item_id", "category"]), default="action",
                 show_default=True, help="Event-file field the model predicts (the worker's STREAM_APP_ACTION_FIELD)."),
    click.option("--users", type=click.IntRange(min=1), default=None,
                 help="Generated data: simulated users [default: 300]."),
    click.option("--events", type=click.IntRange(min=10), default=None,
                 help="Generated data: events in all [default: 30000]."),
    click.option("--data-seed", type=int, default=None, help="Generated data: generator seed [default: 0]."),
    data_dir_option,
)


_action_training = options(
    click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epoch budget [default: the data set's recipe]."),
    click.option("--patience", type=click.IntRange(min=1), default=None,
                 help="Epochs without a better validation MRR before stopping [default: the recipe's]."),
    click.option("--lr", type=float, default=None, help="Adam learning rate [default: the recipe's]."),
    click.option("--hidden-dim", type=click.IntRange(min=1), default=None, help="GRU hidden size [default: the recipe's]."),
    click.option("--seed", type=int, default=0, show_default=True, help="Training seed (same seed, same model)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="auto = the GPU when torch sees one."),
    threads_option, progress_option,
)


@train.command("next-action")
@_action_data
@_action_training
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write.")
@job
def train_next_action_command(out: Path, **options: Any) -> None:
    """Train the next-action GRU on events; early stopping on the validation targets.

    Example: stream-app train next-action --data generated --out next-action.pt
    """
    from models.next_action.datasets import Split
    from models.next_action.training import save_next_action
    from stream_app.jobs.next_action import train_actions

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
    summary("Trained next-action model", rows, f"{env} stream-app worker")


@evaluate.command("next-action")
@_action_data
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint to score [default: train one now with the options below].")
@_action_training
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a markdown table here.")
@job
def evaluate_next_action_command(checkpoint: Path | None, json_out: Path | None, markdown_out: Path | None,
                                 **options: Any) -> None:
    """Acc@1/5/10/20, MRR and NLL of the model, popularity, first-order Markov, user frequency and
    their mix on the same test targets (generated data: also the true distribution, the ceiling).

    Example: stream-app evaluate next-action --data generated --json-out metrics.json
    """
    from stream_app.jobs.next_action import evaluate_actions, load_checkpoint_for, train_actions

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
    write_reports(json_out, markdown_out, report.as_json(), report.markdown())


def _action_data_and_device(options: dict[str, Any]) -> tuple[Any, str]:
    from simulation.users import BehaviorConfig
    from stream_app.jobs import resolve_device
    from stream_app.jobs.next_action import GENERATED_DEFAULT, load_action_data

    set_threads(options.get("threads"))
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


def _action_table(report: Any) -> None:
    from stream_app.jobs.next_action import CEILING, COLUMNS, MODEL_NAME

    table = Table(title=f"Next action on {report.data}: test split, {report.n_targets} targets", title_justify="left")
    table.add_column("method")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for method, values in report.result.metrics.items():
        style = "bold" if method == MODEL_NAME else "dim" if method == CEILING else None
        table.add_row(method, *(cell(values.get(c, math.nan)) for c in COLUMNS), style=style)
    out.print(table)
    gaps = Table(title=f"{MODEL_NAME} minus each method, 95 % paired bootstrap interval", title_justify="left")
    gaps.add_column("method")
    gaps.add_column("acc@1", justify="right")
    gaps.add_column("mrr", justify="right")
    for other, by_metric in report.gaps.items():
        gaps.add_row(other, *(f"{d:+.3f} [{low:+.3f}, {high:+.3f}]" for d, low, high in
                              (by_metric["acc@1"], by_metric["mrr"])))
    out.print(gaps)
