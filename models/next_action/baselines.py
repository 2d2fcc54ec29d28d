"""Next-action baselines: popularity, first-order Markov, the user's own frequency, and their mix."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Protocol, Sequence

import numpy as np

from models.exceptions import ModelError

__all__ = ["ActionScorer", "TrainingCounts", "PopularityScorer", "MarkovScorer", "FrequencyScorer",
           "MixScorer", "standard_baselines"]

logger = logging.getLogger(__name__)


class ActionScorer(Protocol):
    """Scores every vocabulary id as the next action given a history of ids (oldest first)."""

    name: str

    def scores(self, history: Sequence[int]) -> np.ndarray:
        """float64 [vocab]; higher is more likely. Ties are broken by training popularity."""
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
    def fit(cls, sequences: Iterable[Sequence[int]], vocab_size: int) -> "TrainingCounts":
        """Count tokens and (previous -> next) pairs inside each training sequence."""
        counts = cls(vocab_size)
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            np.add.at(counts.popularity, seq, 1.0)
            for prev, nxt in zip(seq[:-1].tolist(), seq[1:].tolist()):
                counts._transitions[prev][nxt] += 1
        return counts

    def transitions_from(self, token: int) -> np.ndarray:
        """Counts of the tokens that followed ``token`` in training: float64 [vocab]."""
        row = np.zeros(self.vocab_size, dtype=np.float64)
        following = self._transitions.get(token)
        if following:
            row[list(following)] = list(following.values())
        return row


class PopularityScorer:
    """How often each token occurred in training, whatever the history."""

    name = "popularity"

    def __init__(self, counts: TrainingCounts) -> None:
        self._counts = counts

    def scores(self, history: Sequence[int]) -> np.ndarray:
        return self._counts.popularity.copy()


class MarkovScorer:
    """Global first-order transitions from the last action of the history (all zero when unseen)."""

    name = "first-order Markov"

    def __init__(self, counts: TrainingCounts) -> None:
        self._counts = counts

    def scores(self, history: Sequence[int]) -> np.ndarray:
        if len(history) == 0:
            return np.zeros(self._counts.vocab_size)
        return self._counts.transitions_from(int(history[-1]))


class FrequencyScorer:
    """How often the user (or session) did each action so far."""

    name = "user's own frequency"

    def __init__(self, vocab_size: int) -> None:
        self._vocab_size = vocab_size

    def scores(self, history: Sequence[int]) -> np.ndarray:
        return np.bincount(np.asarray(history, dtype=np.int64), minlength=self._vocab_size).astype(np.float64)


class MixScorer:
    """``weight`` x first scorer + (1 - weight) x second, each normalized to sum 1 (when non-zero)."""

    def __init__(self, first: ActionScorer, second: ActionScorer, *, weight: float = 0.5,
                 name: str | None = None) -> None:
        self._first, self._second, self._weight = first, second, weight
        self.name = name or f"{weight:g} {first.name} + {1 - weight:g} {second.name}"

    def scores(self, history: Sequence[int]) -> np.ndarray:
        return self._weight * _normalized(self._first.scores(history)) + \
            (1.0 - self._weight) * _normalized(self._second.scores(history))


def standard_baselines(counts: TrainingCounts) -> list[ActionScorer]:
    """The four baselines of the data README, in its order."""
    markov, frequency = MarkovScorer(counts), FrequencyScorer(counts.vocab_size)
    return [PopularityScorer(counts), markov, frequency,
            MixScorer(markov, frequency, name="0.5 Markov + 0.5 user frequency")]


def _normalized(scores: np.ndarray) -> np.ndarray:
    total = scores.sum()
    return scores / total if total > 0 else scores
