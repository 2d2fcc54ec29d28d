"""Next-action evaluation: targets of a split, full-ranking metrics, baselines, markdown tables.

Every target is predicted from the user's whole stream before it (the worker's view), and the
model and the baselines are scored on the same targets. Scores are computed a chunk of targets at
a time ([chunk, vocabulary] at most), so large vocabularies and many targets fit in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.exceptions import ModelError
from models.next_action.baselines import ActionScorer, TargetContext, TrainingCounts, standard_baselines
from models.next_action.datasets import ActionSequence, Split
from models.next_action.features import (
    OOV_ID,
    PAD_ID,
    EncodedEvents,
    FeatureSpec,
    Vocabulary,
    encode_events,
    encode_profiles,
)
from models.next_action.history import ProfileSnapshots
from models.next_action.model import EventTensors, NextActionModel, ProfileTensors

__all__ = [
    "KS", "CUTOFF", "TargetSet", "EvaluationResult", "build_targets", "length_batches", "batch_log_probs",
    "batch_target_log_probs", "iter_model_log_probs", "model_log_probs", "model_ranks", "scorer_ranks",
    "target_ranks", "summarize", "baseline_probabilities", "training_counts", "training_runs",
    "evaluate_next_action", "paired_bootstrap", "markdown_table", "chunk_size",
]

logger = logging.getLogger(__name__)

KS = (1, 5, 10, 20)
CUTOFF = 20
_BASELINE_SMOOTHING = 0.01
_CHUNK_CELLS = 1 << 23  # targets x vocabulary per chunk (64 MB of float64)


def chunk_size(vocab_size: int) -> int:
    """Targets per chunk so that a [chunk, vocab] float64 array stays about 64 MB."""
    return int(max(64, min(16_384, _CHUNK_CELLS // max(1, vocab_size))))


@dataclass(frozen=True)
class TargetSet:
    """The targets of one split. Sequence s is encoded up to its last target, with its profile
    after each event (``profiles[s]``); its targets sit at ``positions[s]`` (each predicted from the
    events before it); ``targets`` holds their ids [n] in sequence order."""

    split: Split
    encoded: list[EncodedEvents]
    profiles: list[ProfileSnapshots]
    positions: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def owners(self) -> tuple[np.ndarray, np.ndarray]:
        """Per target: its sequence index and the position of the event before it, int64 [n] each."""
        owner = np.concatenate([np.full(len(p), s) for s, p in enumerate(self.positions)] or [np.zeros(0, int)])
        before = np.concatenate(self.positions or [np.zeros(0, np.int64)]) - 1
        return owner.astype(np.int64), before.astype(np.int64)

    def contexts(self, chunk: int) -> Iterator[tuple[slice, TargetContext]]:
        """(target slice, what a baseline sees before those targets), ``chunk`` targets at a time."""
        owner, before = self.owners()
        for start in range(0, len(self), chunk):
            part = slice(start, min(len(self), start + chunk))
            pairs = list(zip(owner[part].tolist(), before[part].tolist(), strict=True))
            histories = [self.encoded[s].tokens[:i + 1] for s, i in pairs]
            slots = self.profiles[0].ids.shape[1] if self.profiles else 0
            ids = np.zeros((len(histories), slots), np.int64)
            probs = np.zeros((len(histories), slots), np.float32)
            for row, (s, i) in enumerate(pairs):
                ids[row], probs[row] = self.profiles[s].ids[i], self.profiles[s].probs[i]
            yield part, TargetContext(histories, ids if slots else None, probs if slots else None)


@dataclass
class EvaluationResult:
    """Metrics per method (``metrics[name][metric]``) and each method's per-target ranks and NLL."""

    split: Split
    ks: tuple[int, ...] = KS
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    ranks: dict[str, np.ndarray] = field(default_factory=dict)
    nll: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, ranks: np.ndarray, nll: np.ndarray) -> None:
        self.ranks[name], self.nll[name] = ranks, nll
        self.metrics[name] = summarize(ranks, nll, ks=self.ks)


def build_targets(sequences: Sequence[ActionSequence], vocab: Vocabulary, spec: FeatureSpec,
                  split: Split) -> TargetSet:
    """Encode every sequence that has targets of ``split``, cut after its last one."""
    encoded, profiles, positions, targets = [], [], [], []
    for seq in sequences:
        pos = np.asarray(seq.target_positions(split), dtype=np.int64)
        if pos.size == 0:
            continue
        events = seq.events[:int(pos[-1]) + 1]
        enc = encode_events(events, vocab, spec)
        encoded.append(enc)
        profiles.append(encode_profiles(events, vocab, spec))
        positions.append(pos)
        targets.append(enc.tokens[pos])
    flat = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    return TargetSet(split, encoded, profiles, positions, flat)


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


def _batch_positions(targets: TargetSet, rows: Sequence[int], device: torch.device | str
                     ) -> tuple[EventTensors, ProfileTensors | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collated sequences ``rows`` and their profiles, and, per target, its (row, position before
    it, target id)."""
    batch = EventTensors.collate([targets.encoded[r] for r in rows]).to(device)
    profiles = [targets.profiles[r] for r in rows]
    profile = ProfileTensors.collate(profiles).to(device) if profiles and profiles[0].ids.shape[1] else None
    row_index = torch.cat([torch.full((len(targets.positions[r]),), k) for k, r in enumerate(rows)]).to(device)
    pos = torch.from_numpy(np.concatenate([targets.positions[r] for r in rows])).to(device)
    return batch, profile, row_index, pos - 1, batch.tokens[row_index, pos]


def batch_log_probs(model: NextActionModel, targets: TargetSet, rows: Sequence[int],
                    device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs over the vocabulary at the targets of sequences ``rows``: ([n, vocab], ids [n])."""
    batch, profile, row_index, before, ids = _batch_positions(targets, rows, device)
    return model.log_probs_at(batch, row_index, before, profile), ids


def batch_target_log_probs(model: NextActionModel, targets: TargetSet, rows: Sequence[int],
                           device: torch.device | str, *, leave_one_out: bool = False) -> torch.Tensor:
    """Log-prob of each target of sequences ``rows`` (the training loss's input): [n]."""
    batch, profile, row_index, before, ids = _batch_positions(targets, rows, device)
    return model.target_log_probs(batch, row_index, before, ids, profile=profile, leave_one_out=leave_one_out)


@torch.no_grad()
def iter_model_log_probs(model: NextActionModel, targets: TargetSet, *, device: torch.device | str = "cpu",
                         max_events: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(target indices, log-probs float32 [n, vocab]) for every target, one batch at a time."""
    was_training = model.training
    model.eval()
    budget = max_events or max(256, min(8192, chunk_size(model.config.vocab_size)))
    starts = np.cumsum([0] + [len(p) for p in targets.positions])
    try:
        for rows in length_batches([len(e) for e in targets.encoded], budget):
            picked, _ = batch_log_probs(model, targets, rows, device)
            at = np.concatenate([np.arange(starts[r], starts[r + 1]) for r in rows])
            yield at, picked.cpu().numpy()
    finally:
        model.train(was_training)


def model_log_probs(model: NextActionModel, targets: TargetSet, *, device: torch.device | str = "cpu",
                    max_events: int | None = None) -> np.ndarray:
    """Log-probs over the vocabulary at every target, in target order: float32 [n, vocab] (small sets)."""
    out = np.zeros((len(targets), model.config.vocab_size), dtype=np.float32)
    for at, log_probs in iter_model_log_probs(model, targets, device=device, max_events=max_events):
        out[at] = log_probs
    return out


def model_ranks(model: NextActionModel, targets: TargetSet, popularity: np.ndarray, *,
                device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The model's rank and NLL of every target (float64 [n] each), computed batch by batch."""
    ranks, nll = np.zeros(len(targets)), np.zeros(len(targets))
    for at, log_probs in iter_model_log_probs(model, targets, device=device):
        ids = targets.targets[at]
        ranks[at] = target_ranks(log_probs, ids, popularity)
        nll[at] = -log_probs[np.arange(len(at)), ids].astype(np.float64)
    return ranks, nll


def scorer_ranks(scorer: ActionScorer, targets: TargetSet, popularity: np.ndarray,
                 context: Callable[[TargetContext], TargetContext] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A baseline's rank and NLL of every target, a chunk at a time (``context`` may add to what
    it sees, e.g. a consumed-action filter)."""
    ranks, nll = np.zeros(len(targets)), np.zeros(len(targets))
    for part, seen in targets.contexts(chunk_size(len(popularity))):
        scores = scorer.scores(context(seen) if context else seen)
        ids = targets.targets[part]
        ranks[part] = target_ranks(scores, ids, popularity)
        nll[part] = -np.log(baseline_probabilities(scores, popularity)[np.arange(len(ids)), ids])
    return ranks, nll


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
    ranks: np.ndarray = 1.0 + ahead.sum(axis=1)
    ranks[(targets == PAD_ID) | (targets == OOV_ID)] = np.inf
    return ranks


def summarize(ranks: np.ndarray, nll: np.ndarray | None = None, *, ks: Sequence[int] = KS) -> dict[str, float]:
    """Acc@k (= Recall@k), MRR (full ranking), MRR@20, NLL, each with its standard error, and n."""
    n = len(ranks)
    values = {f"acc@{k}": (ranks <= k).astype(float) for k in ks}
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
    popularity. Negative scores ("never") count as 0."""
    prior = popularity + 1.0
    prior[PAD_ID] = 0.0
    prior = prior / prior.sum()
    scores = np.maximum(np.array(scores, dtype=np.float64), 0.0)
    scores[:, [PAD_ID, OOV_ID]] = 0.0
    total = scores.sum(axis=1, keepdims=True)
    main = np.where(total > 0, scores / np.where(total > 0, total, 1.0), prior[None, :])
    probs: np.ndarray = (1.0 - _BASELINE_SMOOTHING) * main + _BASELINE_SMOOTHING * prior[None, :]
    return probs


def training_counts(sequences: Sequence[ActionSequence], vocab: Vocabulary) -> TrainingCounts:
    """Popularity and transitions over the runs of consecutive training events."""
    return TrainingCounts.fit(training_runs(sequences, vocab), len(vocab))


def training_runs(sequences: Sequence[ActionSequence], vocab: Vocabulary) -> list[np.ndarray]:
    """Ids of each run of consecutive training events (what transition counts may see)."""
    runs = []
    for seq in sequences:
        run: list[str] = []
        for event, split in zip(seq.events, seq.splits, strict=False):
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
                         device: torch.device | str = "cpu", ks: Sequence[int] = KS,
                         targets: TargetSet | None = None) -> EvaluationResult:
    """Metrics of the model and/or the baselines on the targets of ``split`` (same targets for all)."""
    targets = targets if targets is not None else build_targets(sequences, vocab, spec, split)
    counts = training_counts(sequences, vocab)
    result = EvaluationResult(split, tuple(ks))
    if baselines:
        for scorer in standard_baselines(counts, with_profile=spec.profile_size > 0):
            result.add(scorer.name, *scorer_ranks(scorer, targets, counts.popularity))
    if model is not None:
        result.add(model_name, *model_ranks(model, targets, counts.popularity, device=device))
    return result


def paired_bootstrap(ranks_a: np.ndarray, ranks_b: np.ndarray, *, metric: str = f"mrr@{CUTOFF}",
                     n_resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Difference a - b of ``metric`` (mrr, mrr@k or acc@k) over the same targets, with a
    percentile bootstrap interval: (difference, low, high). Resampled in blocks, so memory stays
    small for many targets."""
    diff = _per_target(ranks_a, metric) - _per_target(ranks_b, metric)
    rng = np.random.default_rng(seed)
    block = max(1, (1 << 22) // max(1, len(diff)))
    samples = np.concatenate([diff[rng.integers(0, len(diff), size=(min(block, n_resamples - i), len(diff)))]
                              .mean(axis=1) for i in range(0, n_resamples, block)])
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
