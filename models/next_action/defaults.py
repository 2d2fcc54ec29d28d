"""The next-action recipe chosen from the shape of the training data, so no data set needs its own.

Measured on the training part only: vocabulary size, events and distinct actions per user, the
time a user takes to fill a window, the share of located events and whether actions are places,
and how often users repeat an action they already did. The choices and the shape they came from
are stored in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.next_action.datasets import ActionSequence, Split
from models.next_action.features import EventRecord, haversine_km
from models.next_action.history import profile_decay

__all__ = ["DataShape", "Recipe", "recipe_for", "choose_half_life", "NO_REPEAT_RATE", "PLACE_SPREAD_KM"]

# Below this share of targets repeating one of the user's earlier actions, the data "never repeat":
# the model then never ranks an action the user already did (and baselines do the same).
NO_REPEAT_RATE = 0.01
# Below this spread (km) of an action's events around its own place, the actions are places.
PLACE_SPREAD_KM = 1.0
_HALF_LIFE_WINDOWS = (0.5, 2.0, 8.0, 32.0)


@dataclass(frozen=True)
class DataShape:
    """What the recipe is chosen from (training events only)."""

    users: int
    events: int
    vocab_size: int
    events_per_user_median: float
    events_per_user_p90: float
    events_per_user_p99: float
    distinct_per_user_p90: float
    window_fill_s_median: float
    located_share: float
    place_spread_km: float
    repeat_rate: float

    @classmethod
    def of(cls, sequences: Sequence[ActionSequence], vocab_size: int, *, window_events: int = 50) -> DataShape:
        runs = [[e for e, x in zip(s.events, s.splits, strict=False) if x == Split.TRAIN] for s in sequences]
        runs = [r for r in runs if r]
        lengths = np.array([len(r) for r in runs] or [0], dtype=np.float64)
        distinct = np.array([len({e.token for e in r}) for r in runs] or [0], dtype=np.float64)
        events = int(lengths.sum())
        fills = [r[i].ts_ms - r[i - window_events + 1].ts_ms for r in runs
                 for i in range(window_events - 1, len(r), window_events)]
        located = sum(e.lat is not None for r in runs for e in r)
        spread = _place_spread_km([e for r in runs for e in r])
        repeats = targets = 0
        for run in runs:
            seen: set[str] = set()
            for event in run:
                if seen:
                    targets += 1
                    repeats += event.token in seen
                seen.add(event.token)
        return cls(users=len(runs), events=events, vocab_size=vocab_size,
                   events_per_user_median=float(np.median(lengths)),
                   events_per_user_p90=float(np.percentile(lengths, 90)),
                   events_per_user_p99=float(np.percentile(lengths, 99)),
                   distinct_per_user_p90=float(np.percentile(distinct, 90)),
                   window_fill_s_median=float(np.median(fills)) / 1000.0 if fills else math.inf,
                   located_share=located / max(1, events), place_spread_km=spread,
                   repeat_rate=repeats / max(1, targets))

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Recipe:
    """Model sizes, window, profile, filter and optimisation chosen for a data shape."""

    model: dict[str, Any]      # NextActionConfig fields (vocab_size aside)
    features: dict[str, Any]   # FeatureSpec fields for the profile and the filter
    training: dict[str, Any]   # train_next_action keyword arguments

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _place_spread_km(events: Sequence[EventRecord]) -> float:
    """How far an action's events lie from the action's own median place (km; the median over the
    located events, pooled over actions seen 3 times or more): near 0 when actions are places
    (check-ins at POIs), the size of the area when location is the user's context (inf when too
    few events are located)."""
    by_token: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        if event.lat is not None and event.lon is not None:
            by_token.setdefault(event.token, []).append((event.lat, event.lon))
    distances = []
    for points in by_token.values():
        if len(points) >= 3:
            lat, lon = np.asarray(points).T
            distances.append(haversine_km(lat, lon, np.median(lat), np.median(lon)))
    return float(np.median(np.concatenate(distances))) if distances else math.inf


def _pow2(x: float, low: int, high: int) -> int:
    return int(min(high, max(low, 2 ** round(math.log2(max(x, 1.0))))))


def recipe_for(shape: DataShape) -> Recipe:
    """The defaults for ``shape`` (see the module doc); ``choose_half_life`` may refine the
    profile's half-life from the training sequences."""
    embed = _pow2(8 * shape.vocab_size ** 0.25, 16, 64)
    hidden = max(2 * embed, _pow2(math.sqrt(shape.events) / 2, 32, 128))
    window = int(min(100, max(20, round(shape.events_per_user_p90 / 2))))
    span_s = shape.window_fill_s_median * 4 if math.isfinite(shape.window_fill_s_median) else 365 * 86_400.0
    span_s = float(min(365 * 86_400.0, max(3_600.0, span_s)))
    no_repeats = shape.repeat_rate < NO_REPEAT_RATE
    per_vocab = shape.events / max(1, shape.vocab_size)
    dropout = 0.1 if per_vocab > 60 else 0.25
    # Location is an input where actions are places (each has its own spot, as check-ins do); where
    # it only describes the user's context (an app's screens) it let models memorize users' places.
    places = shape.located_share > 0.05 and shape.place_spread_km < PLACE_SPREAD_KM
    model = dict(embed_dim=embed, hidden_dim=hidden, attn_dim=min(embed, 32), pair_dim=16, cell_dim=8,
                 n_cell_buckets=4096 if shape.events > 50_000 else 1024, use_location=places,
                 window_size=window, window_span_s=span_s, dropout=dropout, exclude_consumed=no_repeats)
    profile_size = 32 if no_repeats else _pow2(shape.distinct_per_user_p90 * 1.5, 8, 256)
    filter_bits = _pow2(16 * shape.events_per_user_p99, 1024, 16384) if no_repeats else 0
    features = dict(profile_size=profile_size, profile_half_life=float(4 * window),
                    consumed_bits=filter_bits, consumed_hashes=3 if no_repeats else 0)
    # Enough optimizer steps per epoch on small logs (about 40 batches), big batches on big ones;
    # a batch's [events, vocabulary] tensors stay a few tens of MB.
    batch = _pow2(shape.events / 40, 256, 4096)
    batch = max(256, min(batch, _pow2(2 ** 25 / max(1, shape.vocab_size), 256, 4096)))
    training = dict(epochs=30, patience=5, lr=3e-3, max_batch_events=batch)
    return Recipe(model, features, training)


def choose_half_life(runs: Sequence[np.ndarray], window: int) -> float:
    """The profile half-life (in events) under which the user's decayed counts rank the next
    training event best (MRR over the targets that repeat an earlier action; candidates are
    multiples of the window and no decay). Ties go to the longer memory."""
    candidates = [window * m for m in _HALF_LIFE_WINDOWS] + [math.inf]
    scores = [_decayed_frequency_mrr(runs, profile_decay(h)) for h in candidates]
    best = max(range(len(candidates)), key=lambda i: (round(scores[i], 4), i))
    return candidates[best]


def _decayed_frequency_mrr(runs: Sequence[np.ndarray], decay: float) -> float:
    """Mean reciprocal rank of each next id among the user's decayed counts so far (0 for a
    first-time id; ties count half)."""
    total, n = 0.0, 0
    for run in runs:
        if len(run) < 2:
            continue
        _, local = np.unique(run, return_inverse=True)
        counts = np.zeros(int(np.max(local)) + 1)
        for t in range(len(run) - 1):
            counts *= decay
            counts[local[t]] += 1.0
            own = counts[local[t + 1]]
            if own > 0:
                above, tied = int((counts > own).sum()), int((counts == own).sum()) - 1
                total += 1.0 / (1.0 + above + tied / 2.0)
            n += 1
    return total / max(1, n)
