"""The predictor a worker serves without a checkpoint: a first-order Markov chain over the user's own
history, computed from nothing but the user's stored state.

Why per user and from the state alone: everything a prediction depends on must be in the
changelog, so that after a crash the events replayed from the last commit get the same top-k as
the first time. The user's state (``UserState``) is written to the changelog with the offsets it
belongs to; counts kept anywhere else (a process-wide table, as the first fallback had) advance
twice for a replayed event and drift apart from what was emitted. Per-partition counts in a store
of their own would also be replay-safe, but each batch would then write one more changelog
record per partition, and every user's prediction would depend on the order other users' events
arrived in; the user's own history needs no new state and no new write.

What is read from the state: the transitions out of the user's current action within the stored
window (bounded by the window's size and span), backed off to the user's action counts
(``UserState.profile``: the ``profile_size`` most frequent actions, undecayed counts, so restored
and live counts are the same floats). Both are Witten-Bell smoothed: a context seen with ``d``
distinct successors keeps ``d / (n + d)`` of its mass for what comes after it less often, and the
counts keep ``t / (n + t)`` for an action the user never did (``t`` distinct actions in ``n``
events). That last mass makes surprisal finite: an action new to the user has probability
``p_new``, so an account taken over by someone who does other things reads as a run of improbable
actions (behavior alerts fire without a checkpoint too).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from models.exceptions import ModelError
from models.next_action.history import Profile
from models.next_action.serving import EventPrediction, update_window
from models.next_action.state import ActionEvent, UserState

__all__ = ["MarkovPredictor", "UserMarkov", "user_markov"]

DEFAULT_PROFILE_SIZE = 64


@dataclass(frozen=True, slots=True)
class UserMarkov:
    """A user's next-action distribution: ``probs`` of the actions the user's history knows (they
    sum to ``1 - p_new``), ``p_new`` the mass left for any action the user never did, ``counts``
    the user's action counts (tie-breaker for equal probabilities)."""

    probs: dict[str, float]
    p_new: float
    counts: dict[str, float]

    def probability(self, token: str) -> float:
        """P(next action = ``token``): an action outside the history gets ``p_new``."""
        return self.probs.get(token, self.p_new)

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most probable actions; ties by the user's count, then by token."""
        ranked = sorted(self.probs.items(), key=lambda kv: (-kv[1], -self.counts.get(kv[0], 0.0), kv[0]))
        return ranked[:k]


def user_markov(state: UserState) -> UserMarkov | None:
    """The distribution of the user's next action after the last event in ``state`` (None for a
    user without events). A pure function of the window and the profile."""
    counts = dict(state.profile.filled()) if state.profile is not None else {}
    total = sum(counts.values())
    if not state.window or total <= 0:
        return None
    base_new = len(counts) / (total + len(counts))
    base = {token: count / (total + len(counts)) for token, count in counts.items()}
    successors = _successors(state, state.window[-1].token)
    n, distinct = sum(successors.values()), len(successors)
    if n == 0:
        return UserMarkov(base, base_new, counts)
    tokens = set(base) | set(successors)
    probs = {t: (successors.get(t, 0) + distinct * base.get(t, 0.0)) / (n + distinct) for t in tokens}
    return UserMarkov(probs, distinct * base_new / (n + distinct), counts)


def _successors(state: UserState, token: str) -> Counter[str]:
    """How often each action followed ``token`` within the stored window."""
    window = state.window
    return Counter(after.token for before, after in zip(window, window[1:], strict=False) if before.token == token)


class MarkovPredictor:
    """The per-user Markov fallback (see the module doc) behind the predictor protocol.

    Each event: its surprisal under the distribution before it (-log p; None for the user's first
    event or with ``surprisal=False``), then the event joins the window and the counts, then the
    top-k of the next action. The state is the only input: two workers given the same state and
    events return the same predictions, whatever else they processed.
    """

    version = "markov-user"

    def __init__(self, *, window_size: int = 200, window_span_s: float = 365 * 86_400.0,
                 profile_size: int = DEFAULT_PROFILE_SIZE, surprisal: bool = True) -> None:
        if window_size < 2 or profile_size < 1:
            raise ModelError(f"MarkovPredictor needs window_size >= 2 (one transition) and profile_size >= 1, "
                             f"got {window_size} and {profile_size}")
        self.window_size, self.window_span_s = window_size, window_span_s
        self.profile_size, self._surprisal = profile_size, surprisal

    def predict(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[list[tuple[str, float]]]:
        return [p.top for p in self.predict_events(states, events, k)]

    def predict_events(self, states: list[UserState], events: list[ActionEvent], k: int) -> list[EventPrediction]:
        """``predict`` with each event's window and surprisal."""
        if len(states) != len(events):
            raise ModelError(f"predict needs one event per state, got {len(states)} states and {len(events)} events")
        _check_k(k)
        return [self._step(state, event, k) for state, event in zip(states, events, strict=True)]

    def predict_many(self, states: list[UserState], sequences: list[list[ActionEvent]],
                     k: int) -> list[list[EventPrediction]]:
        """Each user's events in order (users share nothing, so this equals round by round)."""
        if len(states) != len(sequences):
            raise ModelError(f"predict_many needs one event list per state, got {len(states)} states and "
                             f"{len(sequences)} lists")
        _check_k(k)
        return [[self._step(state, event, k) for event in events] for state, events in zip(states, sequences,
                                                                                            strict=True)]

    def _step(self, state: UserState, event: ActionEvent, k: int) -> EventPrediction:
        profile = self._own_profile(state)
        surprisal = None
        if self._surprisal:
            before = user_markov(state)
            surprisal = None if before is None else -math.log(before.probability(event.token))
        update_window(state, event, window_size=self.window_size, window_span_s=self.window_span_s)
        profile.add(event.token, 1.0)
        if state.consumed is not None:
            state.consumed.add(event.token)  # kept current for a checkpoint that takes over
        state.hidden, state.model_version = None, self.version
        after = user_markov(state)
        window = state.window
        span_s = (window[-1].ts_ms - window[0].ts_ms) / 1000 if window else 0.0
        return EventPrediction(after.top(k) if after is not None else [], len(window), span_s, surprisal)

    def _own_profile(self, state: UserState) -> Profile:
        """A profile of ``profile_size`` slots holding undecayed counts: a state without one is
        seeded from its window; one of another size or left scaled by a decaying model (a
        checkpoint served before) is rebuilt from its counts, so that live and restored counts
        are the same floats."""
        profile = state.profile
        if profile is None:
            profile = state.profile = Profile(self.profile_size)
            for past in state.window:
                profile.add(past.token, 1.0)
            return profile
        if profile.size != self.profile_size or profile.scale != 1.0:
            slots = profile.filled()
            profile = state.profile = Profile(self.profile_size, [t for t, _ in slots], [w for _, w in slots])
            state._profile_ids = None
        return profile


def _check_k(k: int) -> None:
    if k < 1:
        raise ModelError(f"k must be >= 1, got {k}")
