"""Training and evaluation jobs behind `stream-app train next-action` / `evaluate next-action` and the
demo's model.

A data set by name (the shared Foursquare or Diginetica sets, generated users, or an event file),
split as a worker serves it: ``time`` (the default) cuts every user's stream at the same two
instants, so the model trains on the past, is selected on the next part and tested on the last,
each test event predicted from the user's whole earlier stream; ``last`` holds out each user's
last event (test) and the one before (validation). The recipe (sizes, window, profile, batches)
comes from the data's shape (``models.next_action.defaults``), never from a per-data-set table.
The model is scored against the baselines on the same test targets, each with a paired bootstrap
interval of the difference; on generated data also against the generator's true next-action
distribution, the best any model can do.

Diginetica keeps SR-GNN's protocol: sessions of the last 7 days are test, the most recent 10 % of
the others choose the epoch count, then the model is refitted on all training sessions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.exceptions import CheckpointError, ModelError
from models.next_action.datasets import (
    SPLITS,
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
from models.next_action.model import NextActionModel
from models.next_action.training import (
    apply_blend,
    load_next_action,
    model_version,
    save_next_action,
    train_next_action,
)
from simulation.users import BehaviorConfig, BehaviorWorkload, generate_user_events, posterior_next
from stream_app.jobs import JobError, shared_folder

__all__ = [
    "MODEL_NAME", "CEILING", "POSTERIOR", "NAMED_DATA", "DEFAULT_KS", "GENERATED_DEFAULT", "DEMO_WORKLOAD",
    "GeneratedActions", "ActionData", "ActionReport", "generate_actions", "generated_dataset",
    "true_next_probabilities", "load_action_data", "train_actions", "evaluate_actions", "load_checkpoint_for",
    "train_demo_model", "parse_ks",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "GRU + window copy + profile"
CEILING = "true distribution (ceiling)"
POSTERIOR = "generator posterior from actions"
NAMED_DATA = ("foursquare", "diginetica", "generated")
DEFAULT_KS = (1, 5, 10, 20)
EVENT_FILE_FORMAT = ("an event file is JSON lines (.jsonl) or CSV with a header row, one event per row with "
                     "the fields user_id, ts (epoch milliseconds or ISO-8601) and action (or the field named by "
                     "--action-field: item_id or category), optionally lat and lon")
SPLIT_NEEDS = {
    "time": "with --split time every user's stream is cut at the same instants (70 % of all events before the "
            "first cut train, 10 % validate, 20 % test); a training target needs 2 events of one user before the "
            "first cut, a validation or test target 1 event of the user before it",
    "last": "with --split last each user's last event is the test target and the one before the validation "
            "target: a user needs 4 events or more to give a training target (3 to be tested at all)",
}
GENERATED_DEFAULT = BehaviorConfig(n_users=300, n_events=30_000)
DEMO_WORKLOAD = BehaviorConfig(n_users=300, n_events=30_000)
# The demo trains in about a minute: a few epochs of the data's default recipe.
_DEMO_EPOCHS = 6


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


def generate_actions(config: BehaviorConfig, *, valid_fraction: float = 0.1, test_fraction: float = 0.2,
                     split: str = "time") -> GeneratedActions:
    """Generate ``config``'s workload as one sequence per user, split in event time (events before
    the first cut train, then validation, then test) or leave-last-out (``split="last"``)."""
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
        if split == "time":
            splits = tuple(Split.TEST if e["ts"] >= test_from else Split.VALID if e["ts"] >= valid_from
                           else Split.TRAIN for e in picked)
        else:
            splits = tuple([Split.TRAIN] * max(0, len(picked) - 2) +
                           ([Split.VALID, Split.TEST] if len(picked) >= 3 else [Split.TRAIN] * min(2, len(picked))))
        sequences.append(ActionSequence(user, records, splits))
        rows.append(np.asarray(by_user[user], dtype=np.int64))
    described = json.dumps({"config": asdict(config), "valid": valid_fraction, "test": test_fraction, "split": split},
                           sort_keys=True)
    dataset = ActionDataset(f"generated-{config.n_users}u-{n}e-seed{config.seed}", tuple(sequences),
                            hashlib.sha256(described.encode()).hexdigest()[:16])
    return GeneratedActions(dataset, workload, tuple(rows), config)


def generated_dataset(config: BehaviorConfig, *, valid_fraction: float = 0.1,
                      test_fraction: float = 0.2) -> ActionDataset:
    """The generator's events as per-user sequences, split in event time (see ``generate_actions``)."""
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
              for seq, rows in zip(data.dataset.sequences, data.rows, strict=False) if seq.target_positions(split)]
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
    split: str = "time"
    generated: GeneratedActions | None = None
    refit: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def scored(self) -> ActionDataset:
        """What evaluation scores: test targets, baselines counted on its training events."""
        return merge_validation(self.dataset) if self.refit else self.dataset

    def describe(self) -> dict[str, Any]:
        """Plain-typed description stored in checkpoints as ``metadata["data"]``."""
        return {"source": self.source, "name": self.dataset.name, "action_field": self.action_field,
                "split": self.split, "fingerprint": self.dataset.fingerprint, **self.details}


def load_action_data(data: str, *, data_dir: Path | None = None, action_field: str = "action",
                     generated: BehaviorConfig | None = None, split: str = "time") -> ActionData:
    """``data``: foursquare, diginetica, generated (``generated`` or GENERATED_DEFAULT) or an event
    file; shared sets are read from ``data_dir`` (default $STREAM_APP_DATA_DIR, else ../shared/data).
    ``split``: time or last (see the module doc). Raises JobError, saying what is needed, when a
    part of the split has no target."""
    if split not in SPLITS:
        raise JobError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data != "generated" and generated is not None:
        raise JobError("generator settings (--users, --events, --data-seed) only apply to --data generated")
    if data in ("foursquare", "diginetica"):
        if action_field != "action":
            raise JobError(f"--action-field applies to event files; {data} predicts its own items")
        folder = shared_folder(data, data_dir)
        if data == "foursquare":
            return _checked(ActionData("foursquare", _wrap(load_foursquare, folder, split=split), split=split))
        if split != "time":
            raise JobError("diginetica follows SR-GNN's protocol, a time split of its sessions (last 7 days test); "
                           "use --split time")
        return _checked(ActionData("diginetica", _wrap(load_diginetica, folder), refit=True))
    if data == "generated":
        if action_field != "action":
            raise JobError("--action-field applies to event files; generated data predicts the action field")
        config = generated or GENERATED_DEFAULT
        made = generate_actions(config, split=split)
        return _checked(ActionData("generated", made.dataset, split=split, generated=made,
                                   details={"generator": asdict(config)}))
    return _checked(_event_file(Path(data), action_field, split))


def _wrap(loader: Any, folder: Path, **kwargs: Any) -> ActionDataset:
    try:
        dataset: ActionDataset = loader(folder, **kwargs)
        return dataset
    except (ModelError, OSError, ValueError) as exc:
        raise JobError(f"could not read {folder}: {exc}") from exc


def _event_file(path: Path, action_field: str, split: str) -> ActionData:
    if not path.is_file():
        raise JobError(f"--data {str(path)!r} is none of {', '.join(NAMED_DATA)} and no such file exists; "
                       f"{EVENT_FILE_FORMAT}")
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise JobError(f"{path}: unknown file type {path.suffix or '(none)'!r}; {EVENT_FILE_FORMAT}")
    try:
        dataset = load_event_file(path, action_field=action_field, split=split)
    except (ModelError, TypeError, ValueError, OSError) as exc:
        raise JobError(f"{path} is not an event file ({exc}); {EVENT_FILE_FORMAT}") from exc
    if not dataset.sequences:
        raise JobError(f"{path}: no row has a value in {action_field!r}; {EVENT_FILE_FORMAT}")
    return ActionData("file", dataset, action_field=action_field, split=split,
                      details={"path": str(path.resolve())})


def _checked(data: ActionData) -> ActionData:
    """``data`` when each part of its split has targets; else a JobError that says what is needed."""
    counts = {split: data.dataset.n_targets(split) for split in Split}
    empty = [split.name.lower() for split, n in counts.items() if n == 0 and not (data.refit and split == Split.VALID)]
    if not empty:
        return data
    lengths = sorted(len(s.events) for s in data.dataset.sequences)
    median = lengths[len(lengths) // 2] if lengths else 0
    raise JobError(f"{data.dataset.name}: no {' and no '.join(empty)} targets ({len(lengths)} users, median "
                   f"{median} events each; {counts[Split.TRAIN]} training, {counts[Split.VALID]} validation, "
                   f"{counts[Split.TEST]} test targets). {SPLIT_NEEDS.get(data.split, '')}")


# --------------------------------------------------------------------------- next-action jobs

def train_actions(data: ActionData, *, epochs: int | None = None, patience: int | None = None,
                  lr: float | None = None, hidden_dim: int | None = None, window_events: int | None = None,
                  window_span_s: float | None = None, seed: int = 0, device: str = "cpu", progress: bool = True,
                  max_batch_events: int | None = None, stop_metric: str = "mrr", lr_decay: float | None = None,
                  head_dim: int | None = None) -> tuple[NextActionModel, dict[str, Any]]:
    """Train with the recipe chosen from the data's shape; any argument given overrides it. Early
    stopping on ``stop_metric`` over all validation targets. Returns the model and the checkpoint
    metadata (with ``metadata["data"]``)."""
    overrides = {k: v for k, v in dict(hidden_dim=hidden_dim, window_size=window_events, window_span_s=window_span_s,
                                        head_dim=head_dim).items() if v is not None}
    args: dict[str, Any] = dict(epochs=epochs, lr=lr, lr_decay=lr_decay, patience=patience, seed=seed, device=device,
                                progress=progress,
                                max_batch_events=max_batch_events, stop_metric=stop_metric,
                                model_overrides=overrides or None)
    try:
        model, metadata = train_next_action(data.dataset, **args)
        if data.refit:
            first = metadata
            model, metadata = train_next_action(merge_validation(data.dataset),
                                                **{**args, "epochs": max(1, first["best_epoch"])})
            metadata["seconds"] += first["seconds"]
            for key in ("validation", "serve", "baselines", "surprisal", "validation_targets", "blend"):
                metadata[key] = first[key]
            metadata["selection_history"] = first["history"]
            # The blend chosen on the validation sessions applies to the refitted model too.
            metadata["config"] = apply_blend(model, first["blend"]).config.to_dict()
            metadata["version"] = model_version(model, metadata)
    except ModelError as exc:
        raise JobError(f"training on {data.dataset.name} failed: {exc}. {SPLIT_NEEDS.get(data.split, '')}") from exc
    metadata["data"] = data.describe()
    return model, metadata


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,5,10"`` -> (1, 5, 10): the cut-offs of Acc@k (sorted, distinct, each >= 1)."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise JobError(f"--k takes whole numbers separated by commas, e.g. 1,5,10; got {text!r}") from exc
    if not ks or ks[0] < 1:
        raise JobError(f"--k needs cut-offs >= 1, e.g. 1,5,10; got {text!r}")
    return tuple(ks)


@dataclass(frozen=True, eq=False)
class ActionReport:
    """Test metrics of the model, the baselines and (generated data) the ceiling on the same targets."""

    data: str
    split: str
    result: EvaluationResult
    model_version: str
    serves: str
    checkpoint: str | None
    gaps: dict[str, dict[str, list[float]]]  # other method -> metric -> [model - other, low, high]
    training: dict[str, Any] = field(default_factory=dict)  # best epoch, validation metrics, config, seconds

    @property
    def n_targets(self) -> int:
        return int(next(iter(self.result.metrics.values()))["n"]) if self.result.metrics else 0

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"acc@{k}" for k in self.result.ks) + ("mrr", "mrr@20", "nll")

    def as_json(self) -> dict[str, Any]:
        return {"task": "next-action", "data": self.data, "split": self.split, "targets": self.n_targets,
                "ks": list(self.result.ks),
                "model": {"name": MODEL_NAME, "version": self.model_version, "serves": self.serves,
                          "checkpoint": self.checkpoint, **self.training},
                "metrics": {m: {k: _plain(v) for k, v in values.items()} for m, values in self.result.metrics.items()},
                "model_minus": self.gaps}

    def headline(self) -> list[str]:
        """Model version, what it serves, best epoch, training time and targets, as lines."""
        t = self.training
        lines = [f"model {self.model_version}" + (f" (checkpoint serves the baseline {self.serves}: it beat the model "
                                                   "on validation)" if self.serves != "model" else ""),
                 f"data {self.data}, split {self.split}: {self.n_targets} test targets"]
        if "best_epoch" in t:
            valid = t.get("validation", {})
            lines.append(f"best epoch {t['best_epoch']} of {t.get('epochs_run', '?')}, training "
                         f"{t.get('seconds', math.nan):.0f} s, validation MRR {valid.get('mrr', math.nan):.4f} "
                         f"over {t.get('validation_targets', '?')} targets")
        return lines

    def markdown(self) -> str:
        lines = [*(f"{line}  " for line in self.headline()), "",
                 markdown_table(self.result.metrics, columns=self.columns, with_se=True), "",
                 f"{MODEL_NAME} minus each method (paired bootstrap, {_resamples(self.n_targets):,} resamples, "
                 "95 %):", ""]
        for other, by_metric in self.gaps.items():
            cells = "; ".join(f"{metric} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for metric, (d, lo, hi) in by_metric.items())
            lines.append(f"- {other}: {cells}")
        return "\n".join(lines) + "\n"


def evaluate_actions(data: ActionData, model: NextActionModel, metadata: dict[str, Any], *,
                     device: str = "cpu", checkpoint: str | None = None,
                     ks: Sequence[int] = DEFAULT_KS) -> ActionReport:
    """Model, baselines and (generated data) the ceiling on the test targets of ``data``."""
    vocab, spec = Vocabulary.from_list(metadata["vocabulary"]), FeatureSpec.from_dict(metadata["features"])
    sequences = data.scored.sequences
    result = evaluate_next_action(sequences, vocab, spec, Split.TEST, model=model, model_name=MODEL_NAME,
                                  device=device, ks=ks)
    if data.generated is not None:
        _add_reference(result, POSTERIOR, true_next_probabilities(data.generated, vocab, intent_known=False),
                       sequences, vocab)
        _add_reference(result, CEILING, true_next_probabilities(data.generated, vocab), sequences, vocab)
    resamples = _resamples(len(result.ranks[MODEL_NAME]))
    metrics = [f"acc@{k}" for k in ks] + ["mrr"]
    gaps = {other: {metric: list(paired_bootstrap(result.ranks[MODEL_NAME], result.ranks[other], metric=metric,
                                                  n_resamples=resamples))
                    for metric in metrics}
            for other in result.metrics if other != MODEL_NAME}
    kept = ("best_epoch", "validation", "validation_targets", "config", "seconds", "baselines", "recipe", "data_shape")
    training: dict[str, Any] = {key: metadata[key] for key in kept if key in metadata}
    history = metadata.get("selection_history", metadata.get("history", []))
    training["epochs_run"] = len([h for h in history if h.get("epoch", 0) > 0])
    return ActionReport(data.dataset.name, data.split, result, str(metadata["version"]),
                        str(metadata.get("serve", "model")), checkpoint, gaps, training)


def _resamples(n_targets: int) -> int:
    """Bootstrap resamples: 1,000, fewer for very many targets (each resample holds n indices)."""
    return max(200, min(1_000, 50_000_000 // max(1, n_targets)))


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
    model, metadata = train_actions(data, seed=seed, epochs=_DEMO_EPOCHS)
    saved = save_next_action(path, model, metadata)
    valid = metadata["validation"]
    console.print(f"[green]model {metadata['version']}[/]: validation Acc@1 {valid.get('acc@1', math.nan):.3f}, "
                  f"MRR {valid.get('mrr', math.nan):.3f}")
    return saved

