"""Simulated users: sessions driven by latent intents, with the true next-action distribution."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from simulation.clock import (
    DEFAULT_START_MS,
    HOUR_MS,
    MINUTE_MS,
    WEEK_SLOTS,
    SimulationConfigError,
    draw,
    to_latlon,
    utc_offset_ms,
    week_slot,
)

__all__ = ["ACTIONS", "INTENTS", "DEFAULT_START_MS", "Takeover", "BehaviorConfig", "BehaviorWorkload",
           "generate_user_events", "iter_user_events", "posterior_next", "Gathering", "inject_gathering",
           "HabitConfig", "habit_events"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- behavior model

ACTIONS: tuple[str, ...] = (
    "app_open", "home_feed", "notification_open", "search", "search_results", "view_category",
    "view_item", "view_reviews", "compare", "add_to_wishlist", "add_to_cart", "view_cart",
    "checkout", "payment", "purchase", "like", "comment", "share", "follow", "view_profile",
    "watch_video", "read_article", "map_open", "route_search", "start_navigation",
    "transit_status", "ride_request", "checkin", "rate_place", "send_message",
)
INTENTS: tuple[str, ...] = ("browse", "research", "buy", "commute", "social")

# Preferred transitions per intent: last action -> {next action: weight}. The same last action
# leads elsewhere under another intent (view_item: browse->home_feed, research->view_reviews,
# buy->add_to_cart, social->share), so the actions that revealed the intent matter.
_FLOWS: dict[str, dict[str, dict[str, float]]] = {
    "browse": {
        "app_open": {"home_feed": 8, "view_category": 1, "watch_video": 1},
        "notification_open": {"watch_video": 6, "home_feed": 2},
        "home_feed": {"view_item": 7, "watch_video": 2, "read_article": 1},
        "view_item": {"home_feed": 7, "like": 2, "view_category": 1},
        "view_category": {"view_item": 8, "home_feed": 1},
        "watch_video": {"watch_video": 6, "home_feed": 2, "like": 1},
        "read_article": {"home_feed": 7, "read_article": 2, "share": 1},
        "like": {"home_feed": 6, "watch_video": 2},
        "share": {"home_feed": 6},
        "search": {"search_results": 9},
        "search_results": {"view_item": 8, "view_category": 1},
    },
    "research": {
        "app_open": {"search": 8, "view_category": 1},
        "notification_open": {"view_item": 7, "search": 2},
        "home_feed": {"search": 7, "view_item": 2},
        "search": {"search_results": 9},
        "search_results": {"view_item": 8, "search": 2},
        "view_category": {"view_item": 8},
        "view_item": {"view_reviews": 8, "compare": 1, "search_results": 1},
        "view_reviews": {"compare": 6, "view_item": 2, "add_to_wishlist": 2},
        "compare": {"view_item": 6, "add_to_wishlist": 3},
        "add_to_wishlist": {"search_results": 6, "compare": 2},
        "watch_video": {"view_reviews": 5, "view_item": 2},
    },
    "buy": {
        "app_open": {"search": 6, "view_cart": 3},
        "notification_open": {"view_cart": 7, "view_item": 2},
        "home_feed": {"search": 6, "view_item": 2},
        "search": {"search_results": 9},
        "search_results": {"view_item": 8},
        "view_category": {"view_item": 8},
        "view_item": {"add_to_cart": 8, "view_reviews": 1, "search_results": 1},
        "view_reviews": {"add_to_cart": 7, "view_item": 2},
        "add_to_wishlist": {"add_to_cart": 7},
        "add_to_cart": {"view_cart": 6, "search": 3},
        "view_cart": {"checkout": 8, "view_item": 1},
        "checkout": {"payment": 9},
        "payment": {"purchase": 9},
        "purchase": {"home_feed": 3, "share": 2},
    },
    "commute": {
        "app_open": {"map_open": 8, "transit_status": 2},
        "notification_open": {"transit_status": 7, "map_open": 2},
        "map_open": {"route_search": 8, "transit_status": 1},
        "route_search": {"start_navigation": 7, "ride_request": 2},
        "transit_status": {"start_navigation": 5, "ride_request": 3, "route_search": 2},
        "start_navigation": {"read_article": 4, "watch_video": 2, "checkin": 2},
        "ride_request": {"read_article": 5, "checkin": 3},
        "home_feed": {"read_article": 6, "watch_video": 2},
        "read_article": {"read_article": 5, "checkin": 3},
        "watch_video": {"checkin": 5, "watch_video": 3},
        "checkin": {"rate_place": 7, "map_open": 2},
        "rate_place": {"map_open": 4, "home_feed": 2},
        "search": {"route_search": 8, "map_open": 1},
    },
    "social": {
        "app_open": {"notification_open": 6, "home_feed": 3},
        "notification_open": {"view_profile": 6, "comment": 2, "send_message": 2},
        "home_feed": {"like": 7, "comment": 2},
        "like": {"comment": 6, "home_feed": 2},
        "comment": {"view_profile": 5, "like": 2, "send_message": 2},
        "view_profile": {"follow": 5, "send_message": 4},
        "follow": {"view_profile": 5, "home_feed": 3},
        "send_message": {"send_message": 6, "view_profile": 2},
        "share": {"send_message": 7, "home_feed": 2},
        "view_item": {"share": 8, "like": 1},
        "watch_video": {"share": 5, "like": 3},
        "read_article": {"share": 6, "comment": 2},
        "checkin": {"share": 7},
    },
}
# Where an intent drifts back to after an off-script action.
_CORE: dict[str, dict[str, float]] = {
    "browse": {"home_feed": 4, "watch_video": 2, "view_item": 2, "read_article": 1},
    "research": {"search": 3, "view_item": 3, "view_reviews": 2, "compare": 2},
    "buy": {"search": 2, "view_item": 3, "add_to_cart": 2, "view_cart": 2},
    "commute": {"map_open": 2, "transit_status": 2, "read_article": 2, "checkin": 1},
    "social": {"home_feed": 2, "like": 2, "comment": 2, "send_message": 2, "view_profile": 1},
}
# Entry actions per intent: the screen a plain open, a deep link or a notification lands on. The
# sets are disjoint, so a session's first action names its intent: the intent is visible in the
# events a model sees, and the true next-action distribution, which knows the intent, is a ceiling
# a model of the events can reach. Each entry action has a flow under its intent; the app_open and
# notification_open flows of the other intents only follow an off-script move.
_STARTS: dict[str, dict[str, float]] = {
    "browse": {"app_open": 4, "home_feed": 4, "watch_video": 2},
    "research": {"search": 8, "view_category": 2},
    "buy": {"view_cart": 6, "view_item": 4},
    "commute": {"map_open": 6, "transit_status": 4},
    "social": {"notification_open": 6, "send_message": 4},
}
# Probability that the session ends right after an action (base rate per intent, exceptions).
_ENDS: dict[str, tuple[float, dict[str, float]]] = {
    "browse": (0.07, {}),
    "research": (0.06, {"add_to_wishlist": 0.15}),
    "buy": (0.04, {"purchase": 0.6}),
    "commute": (0.06, {"rate_place": 0.5, "checkin": 0.2}),
    "social": (0.08, {}),
}
_WEEKDAY_RHYTHM = (  # relative session rate per local hour, Monday-Friday
    0.08, 0.04, 0.03, 0.03, 0.04, 0.1, 0.4, 0.8, 0.9, 0.6, 0.55, 0.6,
    0.85, 0.8, 0.55, 0.55, 0.65, 0.9, 1.0, 1.05, 1.1, 1.0, 0.6, 0.25,
)
_WEEKEND_RHYTHM = (
    0.12, 0.08, 0.05, 0.03, 0.03, 0.04, 0.1, 0.25, 0.45, 0.7, 0.85, 0.9,
    0.95, 0.9, 0.85, 0.8, 0.8, 0.85, 0.95, 1.0, 1.05, 0.95, 0.7, 0.35,
)
_CATEGORIES = ("electronics", "books", "fashion", "home", "sports", "beauty",
               "toys", "grocery", "music", "garden", "auto", "pets")
_PLACE_TYPES = ("cafe", "restaurant", "gym", "office", "park", "transit", "shop", "bar")
_ITEM_ACTIONS = frozenset({"view_item", "view_reviews", "compare", "add_to_wishlist",
                           "add_to_cart", "purchase"})
_PLACE_ACTIONS = frozenset({"checkin", "rate_place"})
_DWELL_S = {"watch_video": 90.0, "read_article": 60.0, "start_navigation": 240.0,
            "ride_request": 180.0, "view_reviews": 40.0, "compare": 35.0, "payment": 25.0}
_DEVICES = ("ios", "android", "web")


def _weights(spec: dict[str, float]) -> np.ndarray:
    row = np.zeros(len(ACTIONS))
    for name, weight in spec.items():
        row[ACTIONS.index(name)] = weight
    return row / row.sum()


def _transition_matrix(intent: str) -> np.ndarray:
    """[actions, actions] row-stochastic transitions of one intent, smoothed so every pair is possible."""
    core, uniform = _weights(_CORE[intent]), np.full(len(ACTIONS), 1.0 / len(ACTIONS))
    rows = []
    for action in ACTIONS:
        listed = _FLOWS[intent].get(action)
        if listed:
            rows.append(0.92 * _weights(listed) + 0.06 * core + 0.02 * uniform)
        else:
            rows.append(0.75 * core + 0.25 * uniform)
    return np.array(rows)


def _end_probabilities(intent: str) -> np.ndarray:
    base, exceptions = _ENDS[intent]
    return np.array([exceptions.get(action, base) for action in ACTIONS])


def _intent_week_weight(intent: str, weekend: bool, hour: int) -> float:
    rush = not weekend and (7 <= hour < 10 or 16 <= hour < 19)
    table = {
        "browse": 1.0 + (20 <= hour < 24),
        "research": 1.0 + 0.8 * (not weekend and 9 <= hour < 17),
        "buy": 1.0 + 0.8 * (19 <= hour < 23) + 0.5 * weekend,
        "commute": 5.0 if rush else (0.15 if weekend else 0.25),
        "social": 1.0 + (18 <= hour < 24) + 0.5 * weekend,
    }
    return float(table[intent])


class _Model(NamedTuple):
    transitions: np.ndarray  # [intents, actions, actions]
    starts: np.ndarray       # [intents, actions]
    ends: np.ndarray         # [intents, actions]
    intent_week: np.ndarray  # [slots, intents] unnormalized prior weight
    rhythm: np.ndarray       # [slots] relative session rate, mean 1/24 per hour-of-day
    transitions_cum: list[list[list[float]]]
    starts_cum: list[list[float]]


def _permuted(model: _Model, order: np.ndarray) -> _Model:
    """The same behavior over renamed actions: action a plays the role ``order[a]`` had."""
    transitions = model.transitions[:, order][:, :, order]
    starts = model.starts[:, order]
    return _Model(transitions, starts, model.ends[:, order], model.intent_week, model.rhythm,
                  _cumulative(transitions), _cumulative(starts))


def _cumulative(rows: np.ndarray) -> list[Any]:
    """Cumulative sums along the last axis as nested lists (as deep as ``rows``), for ``draw``."""
    cum = np.cumsum(rows, axis=-1)
    cum[..., -1] = 1.0
    return cum.tolist()


def _build_model(n_intents: int) -> _Model:
    intents = INTENTS[:n_intents]
    transitions = np.stack([_transition_matrix(name) for name in intents])
    starts = np.stack([_weights(_STARTS[name]) for name in intents])
    slots = [(s // 24 >= 5, s % 24) for s in range(WEEK_SLOTS)]
    week = np.array([[_intent_week_weight(name, we, h) for name in intents] for we, h in slots])
    rhythm = np.array([(_WEEKEND_RHYTHM if we else _WEEKDAY_RHYTHM)[h] for we, h in slots])
    return _Model(transitions, starts, np.stack([_end_probabilities(n) for n in intents]),
                  week, rhythm * 7.0 / rhythm.sum(),
                  _cumulative(transitions), _cumulative(starts))


# --------------------------------------------------------------------------- behavior config

@dataclass(frozen=True, kw_only=True)
class Takeover:
    """An account takeover: from ``start_ms`` on, user ``user`` (its index) acts like another
    profile: an intruder who uses the app differently (the intents' flows over a permutation of
    the actions, drawn with ``seed``), with other preferences, places and device. The first
    session starting at or after ``start_ms`` is the intruder's."""

    user: int
    start_ms: int
    seed: int = 1


@dataclass(frozen=True, kw_only=True)
class BehaviorConfig:
    """A synthetic population of app users in one city; the defaults give ~2 days of 500 users."""

    n_users: int = 500
    n_events: int | None = 50_000
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    utc_offset_hours: float = -5.0
    center_lat: float = 42.2808
    center_lon: float = -83.7430
    radius_km: float = 8.0
    n_intents: int = len(INTENTS)
    n_items: int = 2_000
    n_places: int = 400
    sessions_per_day: float = 5.0
    min_session_gap_s: float = 1_200.0
    location_share: float = 0.9
    takeovers: tuple[Takeover, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "n_users": self.n_users >= 1,
            "n_events": self.n_events is None or self.n_events >= 0,
            "n_intents": 1 <= self.n_intents <= len(INTENTS),
            "radius_km": self.radius_km > 0,
            "sessions_per_day": self.sessions_per_day > 0,
            "min_session_gap_s": self.min_session_gap_s >= 0,
            "n_items": self.n_items >= len(_CATEGORIES),
            "n_places": self.n_places >= 1,
            "location_share": 0.0 <= self.location_share <= 1.0,
            "takeovers": all(0 <= t.user < self.n_users for t in self.takeovers),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SimulationConfigError(f"BehaviorConfig: invalid {', '.join(bad)}")


@dataclass(frozen=True, kw_only=True)
class BehaviorWorkload:
    """Events in event-time order plus, per event, the true distribution of the user's next action.

    ``true_next``: float32 [events, actions]; row i is P(action of the same user's next event | the
    generator's latent state after event i). ``has_next``: bool [events], False for a user's last
    event in the workload. ``event_intents``: int [events], index into ``intents``.
    ``intruder``: bool [events], True for the events of a taken-over account after the takeover.
    """

    events: list[dict]
    actions: list[str]
    intents: list[str]
    true_next: np.ndarray
    has_next: np.ndarray
    event_intents: np.ndarray
    intruder: np.ndarray


# --------------------------------------------------------------------------- behavior simulation

class _Record(NamedTuple):
    ts: int
    user: int
    event: dict
    intent: int
    action: int
    p_end: float
    phase: int  # 0: the user's own behavior; 1: an intruder's (after a takeover)


class _Catalog(NamedTuple):
    items_by_category: list[list[str]]
    item_cum: list[list[float]]
    place_cum: list[float]


def _zipf_cum(n: int, exponent: float = 1.1) -> list[float]:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return _cumulative(weights / weights.sum())


def _build_catalog(config: BehaviorConfig) -> _Catalog:
    rng = np.random.default_rng([config.seed, 1_000_003])
    owner = rng.permutation(np.arange(config.n_items) % len(_CATEGORIES))
    items = [[f"item-{j:05d}" for j in np.flatnonzero(owner == c)] for c in range(len(_CATEGORIES))]
    return _Catalog(items, [_zipf_cum(len(group)) for group in items], _zipf_cum(config.n_places))


def _next_start_slot_probs(s0_ms: np.ndarray, rates: np.ndarray, offset_ms: int) -> np.ndarray:
    """[n, slots]: distribution of the local week slot of the first arrival after each s0.

    Arrivals follow a Poisson process whose rate (per hour) is piecewise constant on week slots;
    the walk covers one full week from s0 (a partial first slot, 167 whole ones, the rest of the
    first slot) and the geometric sum over later weeks divides by 1 - exp(-weekly mass).
    """
    slot0 = np.asarray(week_slot(s0_ms, offset_ms))
    frac = ((s0_ms + offset_ms) % HOUR_MS) / HOUR_MS
    order = (slot0[:, None] + np.arange(WEEK_SLOTS)) % WEEK_SLOTS
    mass = rates[order]
    tail = mass[:, 0] * frac
    mass[:, 0] *= 1.0 - frac
    before = np.cumsum(mass, axis=1) - mass
    total = rates.sum()
    probs = np.zeros_like(mass)
    np.put_along_axis(probs, order, np.exp(-before) * -np.expm1(-mass), axis=1)
    probs[np.arange(len(slot0)), slot0] += np.exp(-(total - tail)) * -np.expm1(-tail)
    return probs / -np.expm1(-total)


class _UserSim:
    """One user's endless stream of sessions; all randomness comes from the user's own generator."""

    def __init__(self, index: int, config: BehaviorConfig, model: _Model, catalog: _Catalog) -> None:
        self.index, self.config, self.model, self.catalog = index, config, model, catalog
        self.rng = np.random.default_rng([config.seed, 0, index])
        self.user_id = f"user-{index:05d}"
        self.offset_ms = utc_offset_ms(config.utc_offset_hours)
        self._init_traits()
        self.takeover = next((t for t in config.takeovers if t.user == index), None)
        self.phase = 0
        # (model, rates, start mix) of each phase: what _true_next needs for the events of each.
        self.phases = [(self.model, self.rates, self.start_mix)]

    def take_over(self) -> None:
        """Become the intruder: permuted flows, new traits from the takeover's own generator."""
        seed = self.takeover.seed if self.takeover is not None else 0
        self.rng = np.random.default_rng([self.config.seed, 1, self.index, seed])
        self.model = _permuted(self.model, self.rng.permutation(len(ACTIONS)))
        self._init_traits()
        self.phase = 1
        self.phases.append((self.model, self.rates, self.start_mix))

    def _init_traits(self) -> None:
        rng, cfg, n_intents = self.rng, self.config, self.config.n_intents
        self.rates = cfg.sessions_per_day * rng.lognormal(-0.125, 0.5) * self.model.rhythm
        preference = 0.5 * rng.dirichlet(np.ones(n_intents)) + 0.5 / n_intents
        prior = self.model.intent_week * preference
        self.intent_prior = prior / prior.sum(axis=1, keepdims=True)   # [slots, intents]
        self.start_mix = self.intent_prior @ self.model.starts            # [slots, actions]
        self.intent_cum = _cumulative(self.intent_prior)
        self.category_cum = _cumulative(rng.dirichlet(np.full(len(_CATEGORIES), 0.5)))
        self.home = self.city_point(0.55)
        self.work = self.city_point(0.3)
        self.shares_location = rng.random() < cfg.location_share
        self.device = _DEVICES[int(rng.integers(len(_DEVICES)))]

    def city_point(self, spread: float) -> tuple[float, float]:
        east, north = self.rng.normal(0.0, spread * self.config.radius_km, size=2)
        scale = min(1.0, self.config.radius_km / max(math.hypot(east, north), 1e-9))
        return float(east * scale), float(north * scale)

    def next_start(self, s0_ms: int) -> int:
        """First arrival after s0 of the Poisson session process (matches _next_start_slot_probs)."""
        weeks, remaining = divmod(self.rng.exponential(), self.rates.sum())
        slot = int(week_slot(s0_ms, self.offset_ms))
        span = 1.0 - (s0_ms + self.offset_ms) % HOUR_MS / HOUR_MS
        elapsed = weeks * WEEK_SLOTS
        while remaining >= self.rates[slot] * span:
            remaining -= self.rates[slot] * span
            elapsed += span
            slot, span = (slot + 1) % WEEK_SLOTS, 1.0
        elapsed += remaining / self.rates[slot]
        return s0_ms + math.floor(elapsed * HOUR_MS)

    def records(self) -> Iterator[_Record]:
        gap_ms = int(self.config.min_session_gap_s * 1000)
        start = self.next_start(self.config.start_ms)
        for session in itertools.count():
            if self.takeover is not None and self.phase == 0 and start >= self.takeover.start_ms:
                self.take_over()
                start = self.next_start(max(start, self.takeover.start_ms))
            last_ts = yield from _Session(self, session, start).run()
            start = self.next_start(last_ts + gap_ms)


class _Session:
    """One session: a latent intent, a place (or a trip), a category of interest."""

    def __init__(self, user: _UserSim, number: int, start_ms: int) -> None:
        self.user, self.rng, self.start_ms = user, user.rng, start_ms
        self.session_id = f"{user.user_id}-s{number:05d}"
        slot = int(week_slot(start_ms, user.offset_ms))
        self.intent = draw(user.intent_cum[slot], self.rng.random())
        self.category = draw(user.category_cum, self.rng.random())
        self.origin, self.destination, self.trip_ms = self._place(slot)
        self.walk = [0.0, 0.0]
        self.item: str | None = None
        self.seen: list[str] = []
        self.seq = 0

    def _place(self, slot: int) -> tuple[tuple[float, float], tuple[float, float], float]:
        user, weekday, hour = self.user, slot < 120, slot % 24
        if INTENTS[self.intent] == "commute":
            there = (user.home, user.work) if hour < 13 else (user.work, user.home)
            km = math.dist(*there)
            return there[0], there[1], max(5.0, 3.0 * km + self.rng.normal(8.0, 2.0)) * MINUTE_MS
        if self.rng.random() < 0.15:
            spot = user.city_point(0.5)
        else:
            spot = user.work if weekday and 9 <= hour < 17 and self.rng.random() < 0.8 else user.home
        return spot, spot, 1.0

    def run(self) -> Generator[_Record, None, int]:
        model, rng, intent = self.user.model, self.rng, self.intent
        action = draw(model.starts_cum[intent], rng.random())
        ts = self.start_ms
        while True:
            p_end = float(model.ends[intent, action])
            yield _Record(ts, self.user.index, self._event(ts, action), intent, action, p_end, self.user.phase)
            if rng.random() < p_end:
                return ts
            dwell = _DWELL_S.get(ACTIONS[action], 12.0)
            action = draw(model.transitions_cum[intent][action], rng.random())
            ts += max(1_000, int(1000 * dwell * rng.lognormal(0.0, 0.8)))

    def _event(self, ts: int, action: int) -> dict:
        name = ACTIONS[action]
        item_id, category = self._item(name)
        lat, lon = self._location(ts)
        event_id = f"{self.user.user_id}-{self.session_id[-5:]}-{self.seq:04d}"
        self.seq += 1
        return {"event_id": event_id, "user_id": self.user.user_id, "ts": ts, "action": name,
                "item_id": item_id, "category": category, "lat": lat, "lon": lon,
                "session_id": self.session_id, "properties": self._properties(name)}

    def _item(self, name: str) -> tuple[str | None, str | None]:
        rng, catalog = self.rng, self.user.catalog
        if name in _PLACE_ACTIONS:
            place = draw(catalog.place_cum, rng.random())
            return f"place-{place:04d}", _PLACE_TYPES[place % len(_PLACE_TYPES)]
        if name == "view_category":
            return None, _CATEGORIES[self.category]
        if name not in _ITEM_ACTIONS:
            return None, None
        if name == "view_item" or self.item is None:
            if self.seen and rng.random() < 0.25:
                self.item = self.seen[int(rng.integers(len(self.seen)))]
            else:
                group = catalog.items_by_category[self.category]
                self.item = group[draw(catalog.item_cum[self.category], rng.random())]
                self.seen.append(self.item)
        return self.item, _CATEGORIES[self.category]

    def _location(self, ts: int) -> tuple[float | None, float | None]:
        if not self.user.shares_location or self.rng.random() < 0.03:
            return None, None
        progress = min(1.0, (ts - self.start_ms) / self.trip_ms)
        step = self.rng.normal(0.0, 0.02, size=4)  # km: walk step, then GPS noise
        self.walk[0] += step[0]
        self.walk[1] += step[1]
        east = self.origin[0] + (self.destination[0] - self.origin[0]) * progress
        north = self.origin[1] + (self.destination[1] - self.origin[1]) * progress
        center = (self.user.config.center_lat, self.user.config.center_lon)
        return to_latlon(center, float(east + self.walk[0] + step[2]), float(north + self.walk[1] + step[3]))

    def _properties(self, name: str) -> dict:
        rng, props = self.rng, dict[str, Any](device=self.user.device)
        if name == "search":
            props["query_len"] = int(rng.integers(3, 40))
        elif name in ("add_to_cart", "payment", "purchase"):
            props["price"] = round(float(rng.lognormal(3.2, 0.9)), 2)
        elif name == "watch_video":
            props["watch_s"] = int(rng.integers(5, 600))
        elif name in ("route_search", "start_navigation"):
            props["mode"] = ("drive", "transit", "walk", "bike")[int(rng.integers(4))]
        return props


# --------------------------------------------------------------------------- behavior API

def _merged_records(config: BehaviorConfig) -> tuple[list[_UserSim], Iterator[_Record]]:
    model, catalog = _build_model(config.n_intents), _build_catalog(config)
    users = [_UserSim(i, config, model, catalog) for i in range(config.n_users)]
    merged: Iterator[_Record] = heapq.merge(*(user.records() for user in users), key=lambda r: (r.ts, r.user))
    if config.n_events is not None:
        merged = itertools.islice(merged, config.n_events)
    return users, merged


def iter_user_events(config: BehaviorConfig = BehaviorConfig()) -> Iterator[dict]:
    """Events of all users in event-time order; endless when ``config.n_events`` is None."""
    _, records = _merged_records(config)
    return (record.event for record in records)


def generate_user_events(config: BehaviorConfig = BehaviorConfig()) -> BehaviorWorkload:
    """A finite workload: the first ``config.n_events`` events and their true next-action distributions."""
    if config.n_events is None:
        raise SimulationConfigError("BehaviorConfig.n_events: a finite workload needs a number of events")
    users, merged = _merged_records(config)
    records = list(merged)
    return BehaviorWorkload(
        events=[r.event for r in records], actions=list(ACTIONS),
        intents=list(INTENTS[:config.n_intents]),
        true_next=_true_next(records, users), has_next=_has_next(records),
        event_intents=np.array([r.intent for r in records], dtype=np.int16),
        intruder=np.array([r.phase == 1 for r in records], dtype=bool),
    )


def _true_next(records: list[_Record], users: list[_UserSim]) -> np.ndarray:
    """Continue the session with its intent's transitions, or end it and start the next one."""
    n = len(records)
    if n == 0:
        return np.zeros((0, len(ACTIONS)), dtype=np.float32)
    intent = np.array([r.intent for r in records])
    action = np.array([r.action for r in records])
    p_end = np.array([r.p_end for r in records])[:, None]
    owner = np.array([r.user for r in records])
    phase = np.array([r.phase for r in records])
    s0 = np.array([r.ts for r in records], dtype=np.int64) + int(users[0].config.min_session_gap_s * 1000)
    rows = np.zeros((n, len(ACTIONS)))
    key = owner * 2 + phase
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for idx in np.split(order, bounds):
        user = users[owner[idx[0]]]
        model, rates, start_mix = user.phases[phase[idx[0]]]
        rows[idx] = (1.0 - p_end[idx]) * model.transitions[intent[idx], action[idx]]
        slots = _next_start_slot_probs(s0[idx], rates, user.offset_ms)
        rows[idx] += p_end[idx] * np.einsum("ns,sa->na", slots, start_mix)  # small: skip BLAS
    return rows.astype(np.float32)


def _has_next(records: list[_Record]) -> np.ndarray:
    has_next = np.ones(len(records), dtype=bool)
    last: dict[int, int] = {}
    for i, record in enumerate(records):
        last[record.user] = i
    has_next[list(last.values())] = False
    return has_next


def posterior_next(workload: BehaviorWorkload, config: BehaviorConfig, rows: np.ndarray) -> np.ndarray:
    """[rows, actions] next-action distribution after events ``rows``, the session intent inferred
    from actions.

    Uses the generator's parameters (its model of intents and users): posterior over
    intents prior(user, session start slot) x start(first action) x prod over the session's
    steps of (1 - end) x transition; the next action continues the session under each intent or
    ends it, and a new session's start mix is taken from ``true_next`` (it does not depend on
    the ended session's intent)."""
    model = _build_model(config.n_intents)
    catalog = _build_catalog(config)
    users = [_UserSim(i, config, model, catalog) for i in range(config.n_users)]
    user_of = {u.user_id: u for u in users}
    offset = utc_offset_ms(config.utc_offset_hours)
    actions = np.array([workload.actions.index(e["action"]) for e in workload.events])
    posterior = np.zeros((len(actions), config.n_intents))
    sessions: dict[str, tuple[str, np.ndarray, int]] = {}
    for row, event in enumerate(workload.events):
        action, last = actions[row], sessions.get(event["user_id"])
        if last is None or last[0] != event["session_id"]:
            slot = int(week_slot(event["ts"], offset))
            weights = user_of[event["user_id"]].intent_prior[slot] * model.starts[:, action]
        else:
            weights = last[1] * (1.0 - model.ends[:, last[2]]) * model.transitions[:, last[2], action]
        posterior[row] = weights / weights.sum()
        sessions[event["user_id"]] = (event["session_id"], posterior[row], action)
    posterior, actions = posterior[rows], actions[rows]
    ends = model.ends[:, actions].T  # [rows, intents]
    intent = workload.event_intents[rows].astype(np.int64)
    true_end = ends[np.arange(len(rows)), intent][:, None]
    new_session = (workload.true_next[rows] - (1.0 - true_end) * model.transitions[intent, actions]) / true_end
    stay = np.einsum("ni,nia->na", posterior * (1.0 - ends), model.transitions[:, actions].transpose(1, 0, 2))
    return stay + (posterior * ends).sum(axis=1, keepdims=True) * new_session


# --------------------------------------------------------------------------- injected crowds

@dataclass(frozen=True, kw_only=True)
class Gathering:
    """Many people in one place for a while: ``visitors`` extra accounts ("visitor-<seed>-<n>"),
    each sending about ``rate_per_hour`` events from within ``radius_m`` of (lat, lon) between
    ``start_ms`` and ``end_ms``."""

    lat: float
    lon: float
    start_ms: int
    end_ms: int
    visitors: int = 80
    rate_per_hour: float = 4.0
    radius_m: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.end_ms > self.start_ms and self.visitors >= 1 and self.rate_per_hour > 0 and self.radius_m >= 0):
            raise SimulationConfigError(f"Gathering: need end_ms > start_ms, visitors >= 1, rate_per_hour > 0 and "
                                        f"radius_m >= 0, got {self}")


_GATHERING_ACTIONS = ("checkin", "share", "watch_video", "send_message", "like")


def inject_gathering(events: list[dict], gathering: Gathering) -> list[dict]:
    """``events`` with a gathering's events merged in, in event-time order (stable: at equal times
    the original events come first). Injected events carry ``properties["injected"] = "gathering"``."""
    rng = np.random.default_rng([gathering.seed, 7_000_003])
    hours = (gathering.end_ms - gathering.start_ms) / HOUR_MS
    center = (gathering.lat, gathering.lon)
    added = []
    for visitor in range(gathering.visitors):
        user_id = f"visitor-{gathering.seed}-{visitor:05d}"
        count = int(rng.poisson(gathering.rate_per_hour * hours))
        times = np.sort(rng.integers(gathering.start_ms, gathering.end_ms, size=count))
        for n, ts in enumerate(times.tolist()):
            angle, dist = rng.uniform(0, 2 * math.pi), gathering.radius_m / 1000.0 * math.sqrt(rng.random())
            lat, lon = to_latlon(center, dist * math.cos(angle), dist * math.sin(angle))
            added.append({"event_id": f"{user_id}-{n:04d}", "user_id": user_id, "ts": int(ts),
                          "action": _GATHERING_ACTIONS[int(rng.integers(len(_GATHERING_ACTIONS)))],
                          "item_id": None, "category": None, "lat": lat, "lon": lon,
                          "session_id": f"{user_id}-gathering", "properties": {"injected": "gathering"}})
    return [e for _, _, e in sorted([(e["ts"], 0, e) for e in events] + [(e["ts"], 1, e) for e in added],
                                    key=lambda item: (item[0], item[1]))]


# --------------------------------------------------------------------------- habit logs

@dataclass(frozen=True, kw_only=True)
class HabitConfig:
    """Users with strong long-term habits and short bursts of something else: a log of another
    kind than the app users above (check-ins of a few categories, or ratings).

    Each user has ``favourites`` habitual actions (Dirichlet weights over a random subset of
    ``n_actions``); an event is one of them with probability ``habit_share``, else any action by
    popularity. With probability ``burst_rate`` a burst starts: ``burst_events`` events drawn from
    two actions outside the user's habits (a trip, a visit), so the recent window disagrees with
    the long-term habits. With ``repeat=False`` the actions are items consumed once per user
    (ratings): a user draws its items from its favourite genres (``favourites`` of ``n_actions``
    // 20 genres of 20 items... see ``habit_events``) and never repeats one.
    """

    n_users: int = 200
    events_per_user: int = 120
    n_actions: int = 10
    favourites: int = 3
    habit_share: float = 0.85
    burst_rate: float = 0.05
    burst_events: int = 5
    repeat: bool = True
    mean_gap_s: float = 6 * 3_600.0
    start_ms: int = DEFAULT_START_MS
    seed: int = 0

    def __post_init__(self) -> None:
        ok = (self.n_users >= 1 and self.events_per_user >= 1 and self.n_actions >= 2 * max(1, self.favourites) + 2
              and 0 <= self.habit_share <= 1 and 0 <= self.burst_rate <= 1 and self.burst_events >= 1
              and self.mean_gap_s > 0)
        if not ok:
            raise SimulationConfigError(f"HabitConfig: invalid settings {self}")
        if not self.repeat and self.events_per_user > self.n_actions // 2:
            raise SimulationConfigError("HabitConfig: users who never repeat need n_actions >= 2 x events_per_user")


def habit_events(config: HabitConfig) -> list[dict]:
    """A habit log (see HabitConfig) as events {event_id, user_id, ts, action} in event-time order."""
    events = [e for u in range(config.n_users) for e in _habit_user(config, u)]
    events.sort(key=lambda e: (e["ts"], e["user_id"]))
    return events


def _habit_user(config: HabitConfig, index: int) -> list[dict]:
    rng = np.random.default_rng([config.seed, 5, index])
    n = config.n_actions
    popularity = 1.0 / np.arange(1, n + 1) ** 0.8
    popularity /= popularity.sum()
    user_id = f"user-{index:05d}"
    gaps = rng.exponential(config.mean_gap_s * 1000, size=config.events_per_user).astype(np.int64) + 1000
    times = config.start_ms + int(rng.integers(0, int(config.mean_gap_s * 1000))) + np.cumsum(gaps)
    if not config.repeat:
        picks = _never_repeating(rng, config, popularity)
    else:
        habits = rng.choice(n, size=config.favourites, replace=False)
        weights = rng.dirichlet(np.ones(config.favourites))
        picks, burst, burst_actions = [], 0, np.zeros(2, dtype=np.int64)
        for _ in range(config.events_per_user):
            if burst == 0 and rng.random() < config.burst_rate:
                others = np.setdiff1d(np.arange(n), habits)
                burst, burst_actions = config.burst_events, rng.choice(others, size=2, replace=False)
            if burst > 0:
                burst -= 1
                picks.append(int(burst_actions[int(rng.integers(2))]))
            elif rng.random() < config.habit_share:
                picks.append(int(habits[int(rng.choice(config.favourites, p=weights))]))
            else:
                picks.append(int(rng.choice(n, p=popularity)))
    return [{"event_id": f"{user_id}-{i:05d}", "user_id": user_id, "ts": int(t), "action": f"a{a:05d}"}
            for i, (t, a) in enumerate(zip(times.tolist(), picks, strict=False))]


def _never_repeating(rng: np.random.Generator, config: HabitConfig, popularity: np.ndarray) -> list[int]:
    """Items of the user's favourite genres (genre = item id % genres), most popular first on
    average, each at most once."""
    genres = max(2 * config.favourites + 1, config.n_actions // 20)
    liked = rng.choice(genres, size=config.favourites, replace=False)
    in_liked = np.isin(np.arange(config.n_actions) % genres, liked)
    weights = popularity * np.where(in_liked, 1.0, (1 - config.habit_share) / max(config.habit_share, 1e-9) * 0.1)
    order = rng.choice(config.n_actions, size=config.events_per_user, replace=False, p=weights / weights.sum())
    return [int(a) for a in order]
