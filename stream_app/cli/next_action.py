"""`stream-app train next-action` and `evaluate next-action`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
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
_SPLIT_HELP = ("time: cut every user's stream at the same instants (first 70 % of events train, next 10 % "
               "validate, last 20 % test), each test event predicted from the user's whole earlier stream, as a "
               "worker serves it; last: each user's last event is test and the one before validation.")

_VALID_COLUMNS = ("acc@1", "acc@10", "mrr", "nll")


def _span(text: str | None) -> float | None:
    """``--window-span``: seconds, or a number with s, m, h or d."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0}
    text = text.strip().lower()
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: use seconds or a number with s, m, h or d (e.g. 7d)") from exc
    if value <= 0:
        raise click.BadParameter(f"{text!r}: the window span must be positive")
    return value


_action_data = options(
    click.option("--data", required=True, metavar="foursquare|diginetica|generated|FILE", help=_DATA_HELP),
    click.option("--split", type=click.Choice(["time", "last"]), default="time", show_default=True, help=_SPLIT_HELP),
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
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Epoch budget [default: from the data's shape, 30; early stopping ends it sooner]."),
    click.option("--patience", type=click.IntRange(min=1), default=None,
                 help="Epochs without a better validation score before stopping [default: 3]."),
    click.option("--stop-on", type=click.Choice(["mrr", "nll"]), default="mrr", show_default=True,
                 help="Early-stopping criterion over all validation targets (higher MRR or lower NLL)."),
    click.option("--lr", type=float, default=None, help="Adam learning rate [default: 3e-3]."),
    click.option("--hidden-dim", type=click.IntRange(min=1), default=None,
                 help="GRU hidden size [default: from the data's shape]."),
    click.option("--window-events", type=click.IntRange(min=1), default=None,
                 help="Events in a user's recent window [default: from the data's shape, 20-100]."),
    click.option("--window-span", default=None, metavar="SPAN",
                 help="Longest time a window reaches back: seconds or 30m, 12h, 7d [default: from the data's shape]."),
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
    """Train the next-action model on events; early stopping on all validation targets. The recipe
    (sizes, window, long-term profile, batches) is chosen from the data's shape and stored in the
    checkpoint; if a baseline beats the model on validation, the checkpoint serves that baseline.

    Example: stream-app train next-action --data events.csv --out next-action.pt
    """
    from models.next_action.datasets import Split
    from models.next_action.training import save_next_action
    from stream_app.jobs.next_action import train_actions

    data, device = _action_data_and_device(options)
    started = time.monotonic()
    model, metadata = train_actions(data, **_training_args(options, device))
    path = save_next_action(out, model, metadata)
    history = [h for h in metadata.get("selection_history", metadata["history"]) if h["epoch"] > 0]
    serve = metadata.get("serve", "model")
    rows = [("model", f"{metadata['version']}  (best epoch {metadata['best_epoch']} of {len(history)} run)"),
            ("serves", "the model" if serve == "model" else
             f"the baseline {serve} (it beat the model on validation): model_version baseline:{serve}@"
             f"{metadata['version']}"),
            ("data", f"{data.dataset.name}, split {data.split}: {data.dataset.n_targets(Split.TRAIN)} training, "
                     f"{data.dataset.n_targets(Split.VALID)} validation, {data.dataset.n_targets(Split.TEST)} test "
                     "targets"),
            ("validation", "  ".join(f"{k} {metadata['validation'][k]:.4f}" for k in _VALID_COLUMNS
                                     if k in metadata["validation"]) or "none (no validation targets)"),
            ("baselines", "  ".join(f"{name} mrr {m['mrr']:.4f}" for name, m in metadata.get("baselines", {}).items())
             or "-"),
            ("recipe", _recipe_line(metadata)),
            ("device / time", f"{device}, {time.monotonic() - started:.0f} s "
                              f"({metadata.get('seconds', 0):.0f} s fitting)"),
            ("checkpoint", str(path))]
    env = f"STREAM_APP_CHECKPOINT={path}"
    if data.action_field != "action":
        env += f" STREAM_APP_ACTION_FIELD={data.action_field}"
    summary("Trained next-action model", rows, f"{env} stream-app worker")


@evaluate.command("next-action")
@_action_data
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint to score [default: train one now with the options below].")
@click.option("--k", "ks", default="1,5,10,20", show_default=True, metavar="K[,K...]",
              help="Cut-offs of Acc@k (= Recall@k), e.g. 1,3 for a handful of actions.")
@_action_training
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write JSON here.")
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a markdown table here.")
@job
def evaluate_next_action_command(checkpoint: Path | None, ks: str, json_out: Path | None, markdown_out: Path | None,
                                 **options: Any) -> None:
    """Acc@k, MRR and NLL of the model, popularity, first-order Markov, the user's frequency, their
    mix and the "not yet consumed" variants on the same test targets, each baseline with the 95 %
    paired bootstrap interval of the model's difference (generated data: also the true
    distribution, the ceiling).

    Example: stream-app evaluate next-action --data events.csv --k 1,3 --json-out metrics.json
    """
    from stream_app.jobs.next_action import evaluate_actions, load_checkpoint_for, parse_ks, train_actions

    cutoffs = parse_ks(ks)
    data, device = _action_data_and_device(options)
    if checkpoint is None:
        model, metadata = train_actions(data, **_training_args(options, device))
    else:
        model, metadata = load_checkpoint_for(checkpoint, device)
        if metadata.get("data_fingerprint") != data.dataset.fingerprint:
            console.print(f"[yellow]note: {checkpoint} was trained on other data "
                          f"({metadata.get('data', {}).get('name', 'unknown')}); scoring it on {data.dataset.name}[/]")
    report = evaluate_actions(data, model, metadata, device=device, checkpoint=str(checkpoint) if checkpoint else None,
                              ks=cutoffs)
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
                                generated=generated, split=options["split"])
    return data, device


def _training_args(options: dict[str, Any], device: str) -> dict[str, Any]:
    return {"epochs": options["epochs"], "patience": options["patience"], "lr": options["lr"],
            "hidden_dim": options["hidden_dim"], "window_events": options["window_events"],
            "window_span_s": _span(options["window_span"]), "stop_metric": options["stop_on"],
            "seed": options["seed"], "device": device, "progress": options["progress"]}


def _recipe_line(metadata: dict[str, Any]) -> str:
    config, features = metadata.get("config", {}), metadata.get("features", {})
    span_days = config.get("window_span_s", math.nan) / 86_400
    half_life = features.get("profile_half_life", math.inf)
    return (f"hidden {config.get('hidden_dim')}, window {config.get('window_size')} events within {span_days:.3g} d, "
            f"profile {features.get('profile_size', 0)} actions (half-life "
            f"{'none' if not math.isfinite(half_life) else f'{half_life:g} events'})"
            + (", never repeats an action" if config.get("exclude_consumed") else ""))


def _action_table(report: Any) -> None:
    from stream_app.jobs.next_action import CEILING, MODEL_NAME

    # A terminal gets tables fitted to its width; a pipe or a file gets them whole.
    shown = out if out.is_terminal else Console(file=out.file, width=200, no_color=out.no_color)

    for line in report.headline():
        shown.print(line, highlight=False)
    table = Table(title=f"Next action on {report.data}: test split ({report.split}), {report.n_targets} targets",
                  title_justify="left")
    table.add_column("method")
    for column in report.columns:
        table.add_column(column, justify="right")
    for method, values in report.result.metrics.items():
        style = "bold" if method == MODEL_NAME else "dim" if method == CEILING else None
        table.add_row(method, *(cell(values.get(c, math.nan)) for c in report.columns), style=style)
    shown.print(table)
    metrics = [f"acc@{k}" for k in report.result.ks] + ["mrr"]
    gaps = Table(title=f"{MODEL_NAME} minus each method, 95 % paired bootstrap interval", title_justify="left")
    gaps.add_column("method")
    for metric in metrics:
        gaps.add_column(metric, justify="right")
    for other, by_metric in report.gaps.items():
        gaps.add_row(other, *(f"{d:+.3f} [{low:+.3f}, {high:+.3f}]" for d, low, high in
                              (by_metric[m] for m in metrics)))
    shown.print(gaps)
