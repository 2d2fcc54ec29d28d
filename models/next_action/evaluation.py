"""Next-action evaluation: targets of a split, full-ranking metrics, baselines, markdown tables."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from models.next_action.baselines import ActionScorer, TrainingCounts, standard_baselines
from models.next_action.datasets import ActionSequence, Split
from models.exceptions import ModelError
from models.next_action.features import OOV_ID, PAD_ID, EncodedEvents, FeatureSpec, Vocabulary, encode_events
from models.next_action.model import EventTensors, NextActionModel

__all__ = [
    "TargetSet", "EvaluationResult", "build_targets", "length_batches", "batch_log_probs",
    "batch_target_log_probs",
    "model_log_probs", "target_ranks", "summarize", "baseline_probabilities", "training_counts",
    "training_runs",
    "evaluate_next_action", "paired_bootstrap", "markdown_table",
]

logger = logging.getLogger(__name__)

KS = (1, 5, 10, 20)
CUTOFF = 20
_BASELINE_SMOOTHING = 0.01


@dataclass(frozen=True)
class TargetSet:
    """The targets of one split. Sequence s is encoded up to its last target; its targets sit at
    ``positions[s]`` (each predicted from the events before it); ``targets`` holds their ids [n]
    in sequence order."""

    split: Split
    encoded: list[EncodedEvents]
    positions: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def histories(self) -> Iterable[np.ndarray]:
        """Ids before each target (the baselines' input), in target order."""
        for enc, pos in zip(self.encoded, self.positions):
            for i in pos.tolist():
                yield enc.tokens[:i]


@dataclass
class EvaluationResult:
    """Metrics per method (``metrics[name][metric]``) and each method's per-target ranks and NLL."""

    split: Split
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    ranks: dict[str, np.ndarray] = field(default_factory=dict)
    nll: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, ranks: np.ndarray, nll: np.ndarray) -> None:
        self.ranks[name], self.nll[name] = ranks, nll
        self.metrics[name] = summarize(ranks, nll)


def build_targets(sequences: Sequence[ActionSequence], vocab: Vocabulary, spec: FeatureSpec,
                  split: Split) -> TargetSet:
    """Encode every sequence that has targets of ``split``, cut after its last one."""
    encoded, positions, targets = [], [], []
    for seq in sequences:
        pos = np.asarray(seq.target_positions(split), dtype=np.int64)
        if pos.size == 0:
            continue
        enc = encode_events(seq.events[:int(pos[-1]) + 1], vocab, spec)
        encoded.append(enc)
        positions.append(pos)
        targets.append(enc.tokens[pos])
    flat = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    return TargetSet(split, encoded, positions, flat)


def length_batches(lengths: Sequence[int], max_events: int,
                   rng: np.random.Generator | None = None) -> list[list[int]]:
    """Group indices of similar length so that rows x longest <= max_events (one row at least);
    batch order shuffled when ``rng`` is given."""
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1].tolist()
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_events:
            batches[-1].append(index)
        else:
            batches.append([index])
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _batch_positions(targets: TargetSet, rows: Sequence[int],
                     device: torch.device | str) -> tuple[EventTensors, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collated sequences ``rows`` and, per target, its (row, position before it, target id)."""
    batch = EventTensors.collate([targets.encoded[r] for r in rows]).to(device)
    row_index = torch.cat([torch.full((len(targets.positions[r]),), k) for k, r in enumerate(rows)]).to(device)
    pos = torch.from_numpy(np.concatenate([targets.positions[r] for r in rows])).to(device)
    return batch, row_index, pos - 1, batch.tokens[row_index, pos]


def batch_log_probs(model: NextActionModel, targets: TargetSet, rows: Sequence[int],
                    device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs over the vocabulary at the targets of sequences ``rows``: ([n, vocab], ids [n])."""
    batch, row_index, before, ids = _batch_positions(targets, rows, device)
    return model.log_probs_at(batch, row_index, before), ids


def batch_target_log_probs(model: NextActionModel, targets: TargetSet, rows: Sequence[int],
                           device: torch.device | str, *, leave_one_out: bool = False) -> torch.Tensor:
    """Log-prob of each target of sequences ``rows`` (the training loss's input): [n]."""
    batch, row_index, before, ids = _batch_positions(targets, rows, device)
    return model.target_log_probs(batch, row_index, before, ids, leave_one_out=leave_one_out)


@torch.no_grad()
def model_log_probs(model: NextActionModel, targets: TargetSet, *, device: torch.device | str = "cpu",
                    max_events: int = 8192) -> np.ndarray:
    """Log-probs over the vocabulary at every target, in target order: float32 [n, vocab]."""
    was_training = model.training
    model.eval()
    starts = np.cumsum([0] + [len(p) for p in targets.positions])
    out = np.zeros((len(targets), model.config.vocab_size), dtype=np.float32)
    for rows in length_batches([len(e) for e in targets.encoded], max_events):
        picked, _ = batch_log_probs(model, targets, rows, device)
        at = np.concatenate([np.arange(starts[r], starts[r + 1]) for r in rows])
        out[at] = picked.cpu().numpy()
    model.train(was_training)
    return out


def target_ranks(scores: np.ndarray, targets: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """1-based rank of each target in a full ranking of [n, vocab] scores; ties go to the more
    popular token, then the lower id. Padding/OOV are never ranked; an OOV target gets rank inf."""
    scores = np.array(scores, dtype=np.float64)
    scores[:, [PAD_ID, OOV_ID]] = -np.inf
    rows = np.arange(len(targets))
    own, own_pop = scores[rows, targets][:, None], popularity[targets][:, None]
    ids = np.arange(scores.shape[1])[None, :]
    ahead = (scores > own) | ((scores == own) & ((popularity[None, :] > own_pop) |
                                                 ((popularity[None, :] == own_pop) & (ids < targets[:, None]))))
    ranks = 1.0 + ahead.sum(axis=1)
    ranks[(targets == PAD_ID) | (targets == OOV_ID)] = np.inf
    return ranks


def summarize(ranks: np.ndarray, nll: np.ndarray | None = None) -> dict[str, float]:
    """Acc@k (= Recall@k), MRR (full ranking), MRR@20, NLL, each with its standard error, and n."""
    n = len(ranks)
    values = {f"acc@{k}": (ranks <= k).astype(float) for k in KS}
    values["mrr"] = 1.0 / ranks
    values[f"mrr@{CUTOFF}"] = np.where(ranks <= CUTOFF, 1.0 / ranks, 0.0)
    if nll is not None:
        values["nll"] = np.asarray(nll, dtype=np.float64)
    metrics: dict[str, float] = {"n": float(n)}
    for name, v in values.items():
        metrics[name] = float(v.mean()) if n else math.nan
        metrics[f"{name}_se"] = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return metrics


def baseline_probabilities(scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """A baseline's scores as a distribution [n, vocab], mixed with 1 % add-one popularity (OOV
    counted as one more unseen token) so that NLL stays finite; an all-zero row falls back to
    popularity."""
    prior = popularity + 1.0
    prior[PAD_ID] = 0.0
    prior = prior / prior.sum()
    scores = np.array(scores, dtype=np.float64)
    scores[:, [PAD_ID, OOV_ID]] = 0.0
    total = scores.sum(axis=1, keepdims=True)
    main = np.where(total > 0, scores / np.where(total > 0, total, 1.0), prior[None, :])
    return (1.0 - _BASELINE_SMOOTHING) * main + _BASELINE_SMOOTHING * prior[None, :]


def training_counts(sequences: Sequence[ActionSequence], vocab: Vocabulary) -> TrainingCounts:
    """Popularity and transitions over the runs of consecutive training events."""
    return TrainingCounts.fit(training_runs(sequences, vocab), len(vocab))


def training_runs(sequences: Sequence[ActionSequence], vocab: Vocabulary) -> list[np.ndarray]:
    """Ids of each run of consecutive training events (what transition counts may see)."""
    runs = []
    for seq in sequences:
        run: list[str] = []
        for event, split in zip(seq.events, seq.splits):
            if split == Split.TRAIN:
                run.append(event.token)
            elif run:
                runs.append(vocab.encode_many(run))
                run = []
        if run:
            runs.append(vocab.encode_many(run))
    return runs


def evaluate_next_action(sequences: Sequence[ActionSequence], vocab: Vocabulary, spec: FeatureSpec,
                         split: Split = Split.TEST, *, model: NextActionModel | None = None,
                         model_name: str = "GRU + window copy", baselines: bool = True,
                         device: torch.device | str = "cpu") -> EvaluationResult:
    """Metrics of the model and/or the baselines on the targets of ``split`` (same targets for all)."""
    targets = build_targets(sequences, vocab, spec, split)
    counts = training_counts(sequences, vocab)
    result = EvaluationResult(split)
    rows = np.arange(len(targets))
    if baselines:
        for scorer in standard_baselines(counts):
            scores = _baseline_scores(scorer, targets)
            probs = baseline_probabilities(scores, counts.popularity)
            result.add(scorer.name, target_ranks(scores, targets.targets, counts.popularity),
                       -np.log(probs[rows, targets.targets]))
    if model is not None:
        log_probs = model_log_probs(model, targets, device=device)
        result.add(model_name, target_ranks(log_probs, targets.targets, counts.popularity),
                   -log_probs[rows, targets.targets].astype(np.float64))
    return result


def _baseline_scores(scorer: ActionScorer, targets: TargetSet) -> np.ndarray:
    return np.stack([scorer.scores(h) for h in targets.histories()]) if len(targets) else \
        np.zeros((0, 0))


def paired_bootstrap(ranks_a: np.ndarray, ranks_b: np.ndarray, *, metric: str = f"mrr@{CUTOFF}",
                     n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Difference a - b of ``metric`` (mrr, mrr@20 or acc@k) over the same targets, with a
    percentile bootstrap interval: (difference, low, high)."""
    a, b = _per_target(ranks_a, metric), _per_target(ranks_b, metric)
    diff = a - b
    rng = np.random.default_rng(seed)
    samples = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    return float(diff.mean()), float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


def _per_target(ranks: np.ndarray, metric: str) -> np.ndarray:
    if metric == "mrr":
        return 1.0 / ranks
    if metric.startswith("mrr@"):
        k = int(metric[4:])
        return np.where(ranks <= k, 1.0 / ranks, 0.0)
    if metric.startswith("acc@"):
        return (ranks <= int(metric[4:])).astype(float)
    raise ModelError(f"unknown metric {metric!r}; use mrr, mrr@k or acc@k")


def markdown_table(metrics: dict[str, dict[str, float]], *,
                   columns: Sequence[str] = ("acc@1", "acc@5", "acc@10", "acc@20", "mrr", "mrr@20", "nll"),
                   with_se: bool = False) -> str:
    """One row per method: value (± standard error when ``with_se``)."""
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in metrics.items():
        cells = []
        for col in columns:
            value = values.get(col, math.nan)
            cell = f"{value:.3f}"
            if with_se and not math.isnan(values.get(f"{col}_se", math.nan)):
                cell += f" ± {values[f'{col}_se']:.3f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
