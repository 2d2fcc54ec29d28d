"""Training and evaluation jobs behind `stream-app train` / `evaluate` and the demo's model.

Next action: a data set by name (the shared Foursquare or Diginetica sets, generated users, or an
event file), a training recipe per data set, and the model scored against the baselines on the
same test targets; on generated data also against the generator's true next-action distribution,
the best any model can do. Traffic: the graph-GRU on Los-loop under the strict or the T-GCN
protocol, scored with :mod:`models.traffic.evaluation`.

Generated data split: the workload's events are in event-time order; the first 70 % train, the
next 10 % validate, the last 20 % are test, cut at event times, so every user's history is cut at
the same instants ("train on the past, serve the future", as the worker does). Each test target
is predicted from the user's whole history before it. One target per user (leave-last-out) would
give only as many test targets as users (about ±3 points of standard error on Acc@1 for 300
users), too coarse to tell a model from the ceiling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.exceptions import CheckpointError, ModelError
from models.next_action.datasets import (
    ActionDataset,
    ActionSequence,
    Split,
    load_diginetica,
    load_event_file,
    load_foursquare,
    merge_validation,
)
from models.next_action.evaluation import (
    EvaluationResult,
    evaluate_next_action,
    markdown_table,
    paired_bootstrap,
    target_ranks,
    training_counts,
)
from models.next_action.features import EventRecord, FeatureSpec, Vocabulary
from models.next_action.model import NextActionConfig, NextActionModel
from models.next_action.training import (
    load_next_action,
    save_next_action,
    train_next_action,
)
from simulation.users import (
    BehaviorConfig,
    BehaviorWorkload,
    generate_user_events,
    posterior_next,
)
from stream_app.jobs import JobError, shared_folder

__all__ = [
    "MODEL_NAME", "CEILING", "POSTERIOR", "NAMED_DATA", "COLUMNS", "Recipe", "RECIPES",
    "GENERATED_DEFAULT", "DEMO_WORKLOAD", "GeneratedActions", "ActionData", "ActionReport", "generate_actions",
    "generated_dataset", "true_next_probabilities", "load_action_data", "train_actions",
    "evaluate_actions", "load_checkpoint_for", "train_demo_model",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "GRU + window copy"
CEILING = "true distribution (ceiling)"
POSTERIOR = "generator posterior from actions"
NAMED_DATA = ("foursquare", "diginetica", "generated")
COLUMNS = ("acc@1", "acc@5", "acc@10", "acc@20", "mrr", "nll")
EVENT_FILE_FORMAT = ("an event file is JSON lines (.jsonl) or CSV with a header row, one event per row with "
                     "the fields user_id, ts (epoch milliseconds or ISO-8601) and action (or the field named by "
                     "--action-field: item_id or category), optionally lat and lon")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Model size and optimisation of one data set (none chosen on a test split)."""

    config: NextActionConfig
    epochs: int
    lr: float
    patience: int
    max_batch_events: int = 4096


# foursquare and diginetica as in benchmarks/evaluate_next_action.py (CONFIGS).
RECIPES = {
    "foursquare": Recipe(config=NextActionConfig(vocab_size=1, embed_dim=64, hidden_dim=128, n_cell_buckets=4096,
                                                 cell_dim=16, window_size=200, window_span_s=365 * 86_400.0,
                                                 dropout=0.2), epochs=5, lr=2e-3, patience=2),
    "diginetica": Recipe(config=NextActionConfig(vocab_size=1, embed_dim=32, hidden_dim=64, attn_dim=32,
                                                 use_location=False, window_size=50, window_span_s=86_400.0,
                                                 dropout=0.3), epochs=30, lr=3e-3, patience=5),
    # Small batches: a few hundred users are only a few batches of 4,096 events, too few steps per
    # epoch. No dropout: generated data is plentiful and noise-free apart from sampling.
    "generated": Recipe(config=NextActionConfig(vocab_size=1, embed_dim=32, hidden_dim=32, n_cell_buckets=256,
                                                cell_dim=4, attn_dim=16, pair_dim=8, window_size=50,
                                                window_span_s=7 * 86_400.0, dropout=0.0),
                        epochs=8, lr=5e-3, patience=2, max_batch_events=512),
    "file": Recipe(config=NextActionConfig(vocab_size=1, embed_dim=32, hidden_dim=64, n_cell_buckets=1024,
                                           cell_dim=8, attn_dim=32, window_size=50, window_span_s=7 * 86_400.0,
                                           dropout=0.2), epochs=10, lr=3e-3, patience=2, max_batch_events=1024),
}
GENERATED_DEFAULT = BehaviorConfig(n_users=300, n_events=30_000)
DEMO_WORKLOAD = BehaviorConfig(n_users=300, n_events=30_000)


# --------------------------------------------------------------------------- generated data

@dataclass(frozen=True, eq=False)
class GeneratedActions:
    """Generated events as a data set, with the workload they came from (its true distributions).

    ``rows[s][i]`` is the workload row of event ``i`` of sequence ``s``.
    """

    dataset: ActionDataset
    workload: BehaviorWorkload
    rows: tuple[np.ndarray, ...]
    config: BehaviorConfig


def generate_actions(config: BehaviorConfig, *, valid_fraction: float = 0.1,
                     test_fraction: float = 0.2) -> GeneratedActions:
    """Generate ``config``'s workload and split it in event time (see the module doc): one sequence
    per user, events before the cuts train, then validation, then test."""
    if not (0 <= valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise JobError(f"valid_fraction {valid_fraction} and test_fraction {test_fraction} must leave "
                       "some training events")
    workload = generate_user_events(config)
    events = workload.events
    if not events:
        raise JobError("the generated workload is empty; ask for more events")
    n = len(events)
    valid_from = events[min(n - 1, int(n * (1 - valid_fraction - test_fraction)))]["ts"]
    test_from = events[min(n - 1, int(n * (1 - test_fraction)))]["ts"]
    by_user: dict[str, list[int]] = {}
    for row, event in enumerate(events):
        by_user.setdefault(event["user_id"], []).append(row)
    sequences, rows = [], []
    for user in sorted(by_user):
        picked = [events[r] for r in by_user[user]]
        records = tuple(EventRecord(e["action"], int(e["ts"]), e["lat"], e["lon"]) for e in picked)
        splits = tuple(Split.TEST if e["ts"] >= test_from else Split.VALID if e["ts"] >= valid_from
                       else Split.TRAIN for e in picked)
        sequences.append(ActionSequence(user, records, splits))
        rows.append(np.asarray(by_user[user], dtype=np.int64))
    described = json.dumps({"config": asdict(config), "valid": valid_fraction, "test": test_fraction},
                           sort_keys=True)
    dataset = ActionDataset(f"generated-{config.n_users}u-{n}e-seed{config.seed}", tuple(sequences),
                            hashlib.sha256(described.encode()).hexdigest()[:16])
    return GeneratedActions(dataset, workload, tuple(rows), config)


def generated_dataset(config: BehaviorConfig, *, valid_fraction: float = 0.1,
                      test_fraction: float = 0.2) -> ActionDataset:
    """The generator's events as per-user sequences, split in event time (see the module doc)."""
    return generate_actions(config, valid_fraction=valid_fraction, test_fraction=test_fraction).dataset


def true_next_probabilities(data: GeneratedActions, vocab: Vocabulary, split: Split = Split.TEST, *,
                            intent_known: bool = True) -> np.ndarray:
    """The generator's distribution of every target of ``split`` over ``vocab``: float64
    [targets, vocab], targets in the order of ``models.next_action.evaluation.build_targets``; the mass of
    actions outside the vocabulary goes to the OOV id.

    ``intent_known``: row j is P(next action | the generator's latent state after the event before
    target j), the workload's ``true_next`` (no model can beat it). Otherwise the session's intent
    is not known but inferred, by Bayes' rule with the generator's own parameters, from the
    session's start time and its actions so far: the best a model that sees the actions and their
    times can do (locations could still tell it a little more).
    """
    before = [rows[np.asarray(seq.target_positions(split), dtype=np.int64) - 1]
              for seq, rows in zip(data.dataset.sequences, data.rows) if seq.target_positions(split)]
    rows = np.concatenate(before) if before else np.zeros(0, dtype=np.int64)
    truth = data.workload.true_next[rows] if intent_known else posterior_next(data.workload, data.config, rows)
    probs = np.zeros((len(rows), len(vocab)), dtype=np.float64)
    for column, action in enumerate(data.workload.actions):
        probs[:, vocab.encode(action)] += truth[:, column]
    return probs


# --------------------------------------------------------------------------- next-action data

@dataclass(frozen=True, eq=False)
class ActionData:
    """A next-action data set ready for a job.

    ``refit`` (Diginetica): the epoch count is chosen on the validation sessions, then the model is
    refitted on training + validation, which is also what the baselines count (SR-GNN's training part).
    """

    source: str
    dataset: ActionDataset
    action_field: str = "action"
    generated: GeneratedActions | None = None
    refit: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return RECIPES.get(self.source, RECIPES["file"])

    @property
    def scored(self) -> ActionDataset:
        """What evaluation scores: test targets, baselines counted on its training events."""
        return merge_validation(self.dataset) if self.refit else self.dataset

    def describe(self) -> dict[str, Any]:
        """Plain-typed description stored in checkpoints as ``metadata["data"]``."""
        return {"source": self.source, "name": self.dataset.name, "action_field": self.action_field,
                "fingerprint": self.dataset.fingerprint, **self.details}


def load_action_data(data: str, *, data_dir: Path | None = None, action_field: str = "action",
                     generated: BehaviorConfig | None = None) -> ActionData:
    """``data``: foursquare, diginetica, generated (``generated`` or GENERATED_DEFAULT) or an event
    file; shared sets are read from ``data_dir`` (default $STREAM_APP_DATA_DIR, else ../shared/data)."""
    if data != "generated" and generated is not None:
        raise JobError("generator settings (--users, --events, --data-seed) only apply to --data generated")
    if data in ("foursquare", "diginetica"):
        if action_field != "action":
            raise JobError(f"--action-field applies to event files; {data} predicts its own items")
        folder = shared_folder(data, data_dir)
        if data == "foursquare":
            return ActionData("foursquare", _wrap(load_foursquare, folder))
        return ActionData("diginetica", _wrap(load_diginetica, folder), refit=True)
    if data == "generated":
        if action_field != "action":
            raise JobError("--action-field applies to event files; generated data predicts the action field")
        config = generated or GENERATED_DEFAULT
        made = generate_actions(config)
        return ActionData("generated", made.dataset, generated=made, details={"generator": asdict(config)})
    return _event_file(Path(data), action_field)


def _wrap(loader: Any, folder: Path) -> ActionDataset:
    try:
        return loader(folder)
    except (ModelError, OSError, ValueError) as exc:
        raise JobError(f"could not read {folder}: {exc}") from exc


def _event_file(path: Path, action_field: str) -> ActionData:
    if not path.is_file():
        raise JobError(f"--data {str(path)!r} is none of {', '.join(NAMED_DATA)} and no such file exists; "
                       f"{EVENT_FILE_FORMAT}")
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise JobError(f"{path}: unknown file type {path.suffix or '(none)'!r}; {EVENT_FILE_FORMAT}")
    try:
        dataset = load_event_file(path, action_field=action_field)
    except KeyError as exc:  # a row without the user_id field
        raise JobError(f"{path} is not an event file (a row has no field {exc}); {EVENT_FILE_FORMAT}") from exc
    except (ModelError, TypeError, ValueError, OSError) as exc:
        raise JobError(f"{path} is not an event file ({exc}); {EVENT_FILE_FORMAT}") from exc
    if not dataset.sequences:
        raise JobError(f"{path}: no row has a value in {action_field!r}; {EVENT_FILE_FORMAT}")
    if dataset.n_targets(Split.TEST) == 0:
        raise JobError(f"{path}: no user has 3 or more events, so nothing is left to validate and test "
                       "(per user: last event = test, the one before = validation, the rest train)")
    return ActionData("file", dataset, action_field=action_field, details={"path": str(path.resolve())})


# --------------------------------------------------------------------------- next-action jobs

def train_actions(data: ActionData, *, epochs: int | None = None, patience: int | None = None,
                  lr: float | None = None, hidden_dim: int | None = None, seed: int = 0, device: str = "cpu",
                  progress: bool = True, max_batch_events: int | None = None) -> tuple[NextActionModel, dict[str, Any]]:
    """Train with the data set's recipe (any argument given overrides it); early stopping on
    validation MRR. Returns the model and the checkpoint metadata (with ``metadata["data"]``)."""
    recipe = data.recipe
    config = recipe.config if hidden_dim is None else replace(recipe.config, hidden_dim=hidden_dim)
    args = dict(epochs=recipe.epochs if epochs is None else epochs, lr=recipe.lr if lr is None else lr,
                patience=recipe.patience if patience is None else patience, seed=seed, device=device,
                progress=progress,
                max_batch_events=recipe.max_batch_events if max_batch_events is None else max_batch_events)
    try:
        model, metadata = train_next_action(data.dataset, config, **args)
        if data.refit:
            first = metadata
            model, metadata = train_next_action(merge_validation(data.dataset), config,
                                                **{**args, "epochs": max(1, first["best_epoch"])})
            metadata["validation"], metadata["selection_history"] = first["validation"], first["history"]
    except ModelError as exc:
        raise JobError(f"training on {data.dataset.name} failed: {exc}") from exc
    metadata["data"] = data.describe()
    return model, metadata


@dataclass(frozen=True, eq=False)
class ActionReport:
    """Test metrics of the model, the baselines and (generated data) the ceiling on the same targets."""

    data: str
    result: EvaluationResult
    model_version: str
    checkpoint: str | None
    gaps: dict[str, dict[str, list[float]]]  # other method -> metric -> [model - other, low, high]
    training: dict[str, Any] = field(default_factory=dict)  # best epoch, validation metrics, config

    @property
    def n_targets(self) -> int:
        return int(next(iter(self.result.metrics.values()))["n"]) if self.result.metrics else 0

    def as_json(self) -> dict[str, Any]:
        return {"task": "next-action", "data": self.data, "split": "test", "targets": self.n_targets,
                "model": {"name": MODEL_NAME, "version": self.model_version, "checkpoint": self.checkpoint,
                          **self.training},
                "metrics": {m: {k: _plain(v) for k, v in values.items()} for m, values in self.result.metrics.items()},
                "model_minus": self.gaps}

    def markdown(self) -> str:
        lines = [f"Next action on {self.data}: test split, {self.n_targets} targets, model {self.model_version}", "",
                 markdown_table(self.result.metrics, columns=COLUMNS, with_se=True), "",
                 f"{MODEL_NAME} minus each method (paired bootstrap, {_resamples(self.n_targets):,} resamples, "
                 "95 %):", ""]
        for other, by_metric in self.gaps.items():
            cells = "; ".join(f"{metric} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for metric, (d, lo, hi) in by_metric.items())
            lines.append(f"- {other}: {cells}")
        return "\n".join(lines) + "\n"


def evaluate_actions(data: ActionData, model: NextActionModel, metadata: dict[str, Any], *,
                     device: str = "cpu", checkpoint: str | None = None) -> ActionReport:
    """Model, baselines and (generated data) the ceiling on the test targets of ``data``."""
    vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
    sequences = data.scored.sequences
    result = evaluate_next_action(sequences, vocab, spec, Split.TEST, model=model, model_name=MODEL_NAME,
                                  device=device)
    if data.generated is not None:
        _add_reference(result, POSTERIOR, true_next_probabilities(data.generated, vocab, intent_known=False),
                       sequences, vocab)
        _add_reference(result, CEILING, true_next_probabilities(data.generated, vocab), sequences, vocab)
    resamples = _resamples(len(result.ranks[MODEL_NAME]))
    gaps = {other: {metric: list(paired_bootstrap(result.ranks[MODEL_NAME], result.ranks[other], metric=metric,
                                                  n_resamples=resamples))
                    for metric in ("acc@1", "mrr")}
            for other in result.metrics if other != MODEL_NAME}
    training = {key: metadata[key] for key in ("best_epoch", "validation", "config", "seconds") if key in metadata}
    return ActionReport(data.dataset.name, result, str(metadata["version"]), checkpoint, gaps, training)


def _resamples(n_targets: int) -> int:
    """Bootstrap resamples: 1,000, fewer for very many targets (each resample holds n indices)."""
    return max(100, min(1_000, 20_000_000 // max(1, n_targets)))


def _add_reference(result: EvaluationResult, name: str, probs: np.ndarray, sequences: tuple[ActionSequence, ...],
                   vocab: Vocabulary) -> None:
    targets = np.concatenate([vocab.encode_many(seq.events[i].token for i in seq.target_positions(Split.TEST))
                              for seq in sequences if seq.target_positions(Split.TEST)] or [np.zeros(0, np.int64)])
    popularity = training_counts(sequences, vocab).popularity
    nll = -np.log(np.maximum(probs[np.arange(len(targets)), targets], 1e-12))
    result.add(name, target_ranks(probs, targets, popularity), nll)


def _plain(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def load_checkpoint_for(path: Path, device: str) -> tuple[NextActionModel, dict[str, Any]]:
    """A next-action checkpoint's model and metadata; JobError with the reason when unusable."""
    try:
        loaded = load_next_action(path, device=device)
    except CheckpointError as exc:
        raise JobError(str(exc)) from exc
    return loaded.model, loaded.metadata


def train_demo_model(path: str | Path, *, seed: int = 0) -> Path:
    """The demo's next-action checkpoint: ``path`` when it holds a loadable one, else a small model
    trained on generated users (DEMO_WORKLOAD, about a minute on one CPU core) and saved there."""
    path = Path(path)
    if path.is_file():
        try:
            load_next_action(path)
            return path
        except CheckpointError as exc:
            logger.warning("retraining the demo model: %s", exc)
    from stream_app.cli.common import console

    console.print(f"Training a small next-action model on generated users (first run only; cached in {path})")
    data = load_action_data("generated", generated=replace(DEMO_WORKLOAD, seed=seed))
    model, metadata = train_actions(data, seed=seed)
    saved = save_next_action(path, model, metadata)
    valid = metadata["validation"]
    console.print(f"[green]model {metadata['version']}[/]: validation Acc@1 {valid.get('acc@1', math.nan):.3f}, "
                  f"MRR {valid.get('mrr', math.nan):.3f}")
    return saved
