"""Next-action baselines on a hand-made example, and the full-ranking metrics around them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.next_action.baselines import (
    FrequencyScorer,
    MarkovScorer,
    MixScorer,
    PopularityScorer,
    ProfileScorer,
    TargetContext,
    TrainingCounts,
    UnconsumedScorer,
    servable_baselines,
    standard_baselines,
)
from models.next_action.evaluation import baseline_probabilities, target_ranks

# ids 0/1 are padding/OOV; tokens 2..5. Training: 2->3 twice, 3->4, 4->2, 3->2.
TRAIN = [[2, 3, 4, 2, 3], [5, 3, 2]]


@pytest.fixture()
def counts() -> TrainingCounts:
    return TrainingCounts.fit(TRAIN, vocab_size=6)


def test_counts(counts: TrainingCounts) -> None:
    np.testing.assert_array_equal(counts.popularity, [0, 0, 3, 3, 1, 1])
    np.testing.assert_array_equal(counts.transitions_from(3), [0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(counts.transitions_from(5), [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(counts.transitions_from(1), np.zeros(6))


def test_scorers_hand_made(counts: TrainingCounts) -> None:
    one = TargetContext([np.array([5, 4, 4, 3])])
    np.testing.assert_array_equal(PopularityScorer(counts).scores(one), [[0, 0, 3, 3, 1, 1]])
    np.testing.assert_array_equal(MarkovScorer(counts).scores(one), [[0, 0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(FrequencyScorer(6).scores(one), [[0, 0, 0, 1, 2, 1]])
    mix = MixScorer(MarkovScorer(counts), FrequencyScorer(6))
    np.testing.assert_allclose(mix.scores(one), [[0, 0, 0.25, 0.125, 0.5, 0.125]])
    assert MarkovScorer(counts).scores(TargetContext([np.array([], dtype=np.int64)])).sum() == 0
    assert [s.name for s in standard_baselines(counts)] == [
        "popularity", "popularity, not yet consumed", "first-order Markov", "first-order Markov, not yet consumed",
        "user's own frequency", "0.5 Markov + 0.5 user frequency"]


def test_not_yet_consumed_variants_rank_what_the_user_did_last(counts: TrainingCounts) -> None:
    context = TargetContext([np.array([2, 3])])                     # the user did 2 and 3
    scores = UnconsumedScorer(PopularityScorer(counts)).scores(context)
    np.testing.assert_array_equal(scores, [[0, 0, -1, -1, 1, 1]])
    ranks = target_ranks(scores, np.array([2]), counts.popularity)
    assert ranks[0] == 3                                             # below every unconsumed token (4, 5)
    markov = UnconsumedScorer(MarkovScorer(counts)).scores(context)  # after 3: {2, 4}; 2 is done
    np.testing.assert_array_equal(markov, [[0, 0, -1, -1, 1, 0]])
    probs = baseline_probabilities(scores, counts.popularity)
    assert probs[0, 2] == pytest.approx(0.01 * 4 / 13)               # "never" keeps only the smoothing


def test_profile_scorer_reads_the_profile_snapshot(counts: TrainingCounts) -> None:
    context = TargetContext([np.array([2])], profile_ids=np.array([[3, 5, 0]]),
                            profile_probs=np.array([[0.75, 0.25, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(ProfileScorer(6).scores(context), [[0, 0, 0, 0.75, 0, 0.25]])
    served = servable_baselines(counts)
    assert set(served) == {"popularity", "markov", "user-frequency", "mix"}
    np.testing.assert_allclose(served["mix"].scores(context), [[0, 0, 0, 0.375 + 0.5, 0, 0.125]])


def test_ties_broken_by_popularity_then_id(counts: TrainingCounts) -> None:
    scores = np.array([[0, 0, 1, 0, 1, 0],      # Markov after 3: {2, 4} tie; 2 is more popular
                       [0, 0, 0, 0, 0, 0]])     # all tied: popularity 2 = 3 > 4 = 5, then id
    ranks = target_ranks(scores, np.array([4, 5]), counts.popularity)
    np.testing.assert_array_equal(ranks, [2, 4])
    assert target_ranks(scores[:1], np.array([1]), counts.popularity)[0] == math.inf   # OOV target


def test_baseline_probabilities_are_finite_distributions(counts: TrainingCounts) -> None:
    probs = baseline_probabilities(np.array([[0, 0, 1, 0, 1, 0], [0.0] * 6]), counts.popularity)
    np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0])
    assert (probs[:, 1:] > 0).all() and (probs[:, 0] == 0).all()      # OOV keeps a little mass
    assert probs[0, 2] == pytest.approx(0.99 * 0.5 + 0.01 * 4 / 13)
