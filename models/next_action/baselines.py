"""Next-action baselines: popularity, first-order Markov, the user's own frequency (whole history or
the decayed profile a worker keeps), their mix, and the "not yet consumed" variants.

Every baseline scores a chunk of targets at once from what a worker could know before each one
(``TargetContext``): higher is more likely, a negative score means "never" (ranked last).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.exceptions import ModelError

__all__ = ["TargetContext", "ActionScorer", "TrainingCounts", "PopularityScorer", "MarkovScorer",
           "FrequencyScorer", "ProfileScorer", "MixScorer", "UnconsumedScorer", "standard_baselines",
           "servable_baselines", "SERVABLE"]

logger = logging.getLogger(__name__)

# The baselines a worker can serve from a user state (key -> what model_version calls it).
SERVABLE = ("popularity", "markov", "user-frequency", "mix")


@dataclass(frozen=True)
class TargetContext:
    """What is known before each of c targets: the user's ids so far (oldest first), the profile
    snapshot (ids and probabilities [c, slots], None without a profile), and which ids the user
    already did (bool [c, vocab]; computed from ``histories`` when None)."""

    histories: Sequence[np.ndarray]
    profile_ids: np.ndarray | None = None
    profile_probs: np.ndarray | None = None
    consumed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.histories)

    def consumed_mask(self, vocab_size: int) -> np.ndarray:
        if self.consumed is not None:
            return self.consumed
        mask = np.zeros((len(self.histories), vocab_size), dtype=bool)
        for row, history in enumerate(self.histories):
            mask[row, np.asarray(history, dtype=np.int64)] = True
        return mask

    def last_ids(self) -> np.ndarray:
        """The last id before each target (-1 when there is none): int64 [c]."""
        return np.array([int(h[-1]) if len(h) else -1 for h in self.histories], dtype=np.int64)


class ActionScorer(Protocol):
    """Scores every vocabulary id as the next action of each target: float64 [c, vocab]."""

    name: str

    def scores(self, context: TargetContext) -> np.ndarray:
        ...


class TrainingCounts:
    """Token popularity and global first-order transitions counted over training sequences of ids."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise ModelError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.popularity = np.zeros(vocab_size, dtype=np.float64)
        self._transitions: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    @classmethod
    def fit(cls, sequences: Iterable[Sequence[int] | np.ndarray], vocab_size: int) -> TrainingCounts:
        """Count tokens and (previous -> next) pairs inside each training sequence."""
        counts = cls(vocab_size)
        for sequence in sequences:
            seq = np.asarray(sequence, dtype=np.int64)
            np.add.at(counts.popularity, seq, 1.0)
            for prev, nxt in zip(seq[:-1].tolist(), seq[1:].tolist(), strict=True):
                counts._transitions[prev][nxt] += 1
        return counts

    def transitions_from(self, token: int) -> np.ndarray:
        """Counts of the tokens that followed ``token`` in training: float64 [vocab]."""
        row = np.zeros(self.vocab_size, dtype=np.float64)
        following = self._transitions.get(token)
        if following:
            row[list(following)] = list(following.values())
        return row

    def transition_rows(self, last: np.ndarray) -> np.ndarray:
        """``transitions_from`` of each id (zeros for -1): float64 [c, vocab]."""
        rows = np.zeros((len(last), self.vocab_size), dtype=np.float64)
        for row, token in enumerate(last.tolist()):
            following = self._transitions.get(token) if token >= 0 else None
            if following:
                rows[row, list(following)] = list(following.values())
        return rows


class PopularityScorer:
    """How often each token occurred in training, whatever the history."""

    name = "popularity"

    def __init__(self, counts: TrainingCounts) -> None:
        self._counts = counts

    def scores(self, context: TargetContext) -> np.ndarray:
        return np.broadcast_to(self._counts.popularity, (len(context), self._counts.vocab_size)).copy()


class MarkovScorer:
    """Global first-order transitions from the last action of the history (all zero when unseen)."""

    name = "first-order Markov"

    def __init__(self, counts: TrainingCounts) -> None:
        self._counts = counts

    def scores(self, context: TargetContext) -> np.ndarray:
        return self._counts.transition_rows(context.last_ids())


class FrequencyScorer:
    """How often the user (or session) did each action so far, over the whole history."""

    name = "user's own frequency"

    def __init__(self, vocab_size: int) -> None:
        self._vocab_size = vocab_size

    def scores(self, context: TargetContext) -> np.ndarray:
        rows = np.zeros((len(context), self._vocab_size), dtype=np.float64)
        for row, history in enumerate(context.histories):
            rows[row] = np.bincount(np.asarray(history, dtype=np.int64), minlength=self._vocab_size)
        return rows


class ProfileScorer:
    """The user's decayed, bounded counts (the profile a worker keeps): what a worker serves as the
    user-frequency baseline. All zero without a profile."""

    name = "user's decayed frequency (profile)"

    def __init__(self, vocab_size: int) -> None:
        self._vocab_size = vocab_size

    def scores(self, context: TargetContext) -> np.ndarray:
        rows = np.zeros((len(context), self._vocab_size), dtype=np.float64)
        if context.profile_ids is not None and context.profile_probs is not None:
            np.add.at(rows, (np.arange(len(context))[:, None], context.profile_ids.astype(np.int64)),
                      context.profile_probs.astype(np.float64))
            rows[:, 0] = 0.0  # empty slots
        return rows


class MixScorer:
    """``weight`` x first scorer + (1 - weight) x second, each normalized to sum 1 (when non-zero)."""

    def __init__(self, first: ActionScorer, second: ActionScorer, *, weight: float = 0.5,
                 name: str | None = None) -> None:
        self._first, self._second, self._weight = first, second, weight
        self.name = name or f"{weight:g} {first.name} + {1 - weight:g} {second.name}"

    def scores(self, context: TargetContext) -> np.ndarray:
        return self._weight * _normalized(self._first.scores(context)) + \
            (1.0 - self._weight) * _normalized(self._second.scores(context))


class UnconsumedScorer:
    """Another scorer restricted to the actions the user never did: those rank last (score -1)."""

    def __init__(self, inner: ActionScorer, *, name: str | None = None) -> None:
        self._inner = inner
        self.name = name or f"{inner.name}, not yet consumed"

    def scores(self, context: TargetContext) -> np.ndarray:
        scores = self._inner.scores(context)
        scores[context.consumed_mask(scores.shape[1])] = -1.0
        return scores


def standard_baselines(counts: TrainingCounts, *, with_profile: bool = False) -> list[ActionScorer]:
    """The data README's four baselines, the "not yet consumed" variants of popularity and Markov,
    and (``with_profile``) the decayed profile a worker keeps and its mix with Markov."""
    markov, frequency = MarkovScorer(counts), FrequencyScorer(counts.vocab_size)
    popularity = PopularityScorer(counts)
    scorers: list[ActionScorer] = [popularity, UnconsumedScorer(popularity), markov, UnconsumedScorer(markov),
                                   frequency, MixScorer(markov, frequency, name="0.5 Markov + 0.5 user frequency")]
    if with_profile:
        profile = ProfileScorer(counts.vocab_size)
        scorers += [profile, MixScorer(markov, profile, name="0.5 Markov + 0.5 decayed frequency")]
    return scorers


def servable_baselines(counts: TrainingCounts, *, exclude_consumed: bool = False) -> dict[str, ActionScorer]:
    """The baselines a worker can serve from a user state (SERVABLE), as scored on validation;
    with ``exclude_consumed`` popularity and Markov skip what the user already did."""
    popularity: ActionScorer = PopularityScorer(counts)
    markov: ActionScorer = MarkovScorer(counts)
    if exclude_consumed:
        popularity, markov = UnconsumedScorer(popularity), UnconsumedScorer(markov)
    profile = ProfileScorer(counts.vocab_size)
    return {"popularity": popularity, "markov": markov, "user-frequency": profile,
            "mix": MixScorer(markov, profile, name="0.5 Markov + 0.5 decayed frequency")}


def _normalized(scores: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1 over their positive entries; negative entries ("never") stay -1."""
    positive = np.maximum(scores, 0.0)
    total = positive.sum(axis=-1, keepdims=True)
    out = np.where(total > 0, positive / np.where(total > 0, total, 1.0), 0.0)
    return np.where(scores < 0, -1.0, out)
