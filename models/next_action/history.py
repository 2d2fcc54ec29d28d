"""A user's whole history in constant space: decayed action counts (the long-term profile) and a
filter of the actions already consumed.

Both are plain functions of the user's token strings, shared by training (one pass over a whole
sequence, a snapshot after every event) and serving (the same update, one event at a time, from
the user's stored state), so the two cannot drift apart. Both are keyed by the token string, not a
model's id, so a user's history survives a model change.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from models.exceptions import ModelError

__all__ = ["Profile", "ProfileSnapshots", "profile_decay", "profile_snapshots", "advance_profiles",
           "consumed_bits", "ConsumedFilter"]

_RESCALE_BELOW = 1e-150


def profile_decay(half_life: float) -> float:
    """Per-event decay factor of a profile whose counts halve every ``half_life`` events."""
    if not half_life > 0:
        raise ModelError(f"profile half-life must be > 0 events, got {half_life}")
    return 0.5 ** (1.0 / half_life) if math.isfinite(half_life) else 1.0


class Profile:
    """Exponentially decayed counts of a user's actions in at most ``size`` slots.

    Each event first multiplies every count by ``decay``, then adds 1 to its token's count; a token
    new to a full profile takes the slot of the smallest count (the first such slot on a tie), so
    the profile keeps the user's strongest habits. Counts are kept as ``units * scale`` (``scale``
    shrinks by ``decay`` per event), so an event costs O(1) plus an argmin over the slots when a
    slot is replaced.
    """

    __slots__ = ("tokens", "units", "scale", "_index")

    def __init__(self, size: int, tokens: Sequence[str] = (), weights: Sequence[float] | np.ndarray = ()) -> None:
        if size < 0:
            raise ModelError(f"profile size must be >= 0, got {size}")
        self.tokens: list[str] = [""] * size
        self.units = np.zeros(size, dtype=np.float64)
        self.scale = 1.0
        self._index: dict[str, int] = {}
        order: list[int] = np.argsort(-np.asarray(weights, dtype=np.float64), kind="stable")[:size].tolist() \
            if len(tokens) else []
        for slot, i in enumerate(sorted(order)):  # keep the stored slot order (it fixes ties and sums)
            self.tokens[slot], self.units[slot] = tokens[i], float(weights[i])
            self._index[tokens[i]] = slot

    @property
    def size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, token: str, decay: float) -> int:
        """Count one event of ``token``; returns the slot it occupies (-1 for a size-0 profile)."""
        if not self.tokens:
            return -1
        if decay != 1.0:
            self.scale *= decay
            if self.scale < _RESCALE_BELOW:
                self.units *= self.scale
                self.scale = 1.0
        slot = self._index.get(token)
        if slot is None:
            slot = len(self._index) if len(self._index) < len(self.tokens) else int(np.argmin(self.units))
            if self._occupied(slot):
                del self._index[self.tokens[slot]]
            self.tokens[slot], self.units[slot] = token, 0.0
            self._index[token] = slot
        self.units[slot] += 1.0 / self.scale
        return slot

    def _occupied(self, slot: int) -> bool:
        return self._index.get(self.tokens[slot]) == slot

    def slot_ids(self, encode: dict[str, int], oov_id: int = 1) -> np.ndarray:
        """Vocabulary id of each slot's token (``oov_id`` when unknown, 0 for an empty slot): int64 [size]."""
        ids = np.zeros(len(self.tokens), dtype=np.int64)
        if self._index:  # (the occupied slots)
            ids[list(self._index.values())] = [encode.get(t, oov_id) for t in self._index]
        return ids

    def weights(self) -> np.ndarray:
        """Current counts per slot: float64 [size] (0 for an empty slot)."""
        return self.units * self.scale

    def filled(self) -> list[tuple[str, float]]:
        """(token, count) of the occupied slots, in slot order: what a user state stores."""
        weights = self.weights()
        return [(self.tokens[s], float(weights[s])) for s in range(len(self.tokens)) if self._occupied(s)]

    def copy(self) -> Profile:
        other = Profile(0)
        other.tokens, other.units, other.scale = list(self.tokens), self.units.copy(), self.scale
        other._index = dict(self._index)
        return other


class ProfileSnapshots:
    """The profile after each event of a sequence, as the model reads it: ``ids`` int32 [time, size]
    (the vocabulary id of each slot's token, 0 for an empty slot), ``probs`` float32 [time, size]
    (counts normalized to sum 1) and ``mass`` float32 [time] (total count)."""

    __slots__ = ("ids", "probs", "mass")

    def __init__(self, ids: np.ndarray, probs: np.ndarray, mass: np.ndarray) -> None:
        self.ids, self.probs, self.mass = ids, probs, mass

    @classmethod
    def empty(cls, n: int, size: int) -> ProfileSnapshots:
        return cls(np.zeros((n, size), np.int32), np.zeros((n, size), np.float32), np.zeros(n, np.float32))

    def __len__(self) -> int:
        return int(self.mass.shape[0])

    def select(self, index: slice | np.ndarray) -> ProfileSnapshots:
        return ProfileSnapshots(self.ids[index], self.probs[index], self.mass[index])

    @staticmethod
    def concat(parts: Sequence[ProfileSnapshots]) -> ProfileSnapshots:
        return ProfileSnapshots(np.concatenate([p.ids for p in parts]), np.concatenate([p.probs for p in parts]),
                                np.concatenate([p.mass for p in parts]))


def profile_snapshots(tokens: Iterable[str], encode: dict[str, int], profile: Profile, decay: float,
                      slot_ids: np.ndarray | None = None, oov_id: int = 1) -> ProfileSnapshots:
    """Add ``tokens`` to ``profile`` (in place) and snapshot it after each one.

    ``encode`` maps a token to its vocabulary id (unknown tokens get ``oov_id``); ``slot_ids``
    (int64 [size], updated in place) are the ids of the profile's current slots when the caller
    keeps them, else they are computed from the profile.
    """
    ids = profile.slot_ids(encode, oov_id) if slot_ids is None else slot_ids
    return advance_profiles([list(tokens)], encode, [profile], decay, [ids], oov_id)[1]


def advance_profiles(runs: Sequence[Sequence[str]], encode: dict[str, int], profiles: Sequence[Profile],
                     decay: float, slot_ids: Sequence[np.ndarray], oov_id: int = 1
                     ) -> tuple[ProfileSnapshots, ProfileSnapshots]:
    """``profile_snapshots`` for several users at once: add ``runs[i]`` to ``profiles[i]`` (in
    place; all of one size) and return the snapshots before each run [users] and after each token
    [tokens of all runs, back to back]. ``slot_ids[i]`` (int64 [size]) are the ids of profile i's
    slots, updated in place.

    Python does the O(1) ``Profile.add`` per token and numpy the rest: each snapshot row is the
    user's starting counts with, per slot, the value of its latest update (a forward fill down
    the rows), so the work per token does not grow with the profile's size.
    """
    counts = [len(run) for run in runs]
    size = profiles[0].size if profiles else 0
    n_rows = len(runs) + sum(counts)
    if size == 0 or n_rows == len(runs):
        for profile, run in zip(profiles, runs, strict=True):
            for token in run:
                profile.add(token, decay)  # (only the count of a size-0 profile's events moves)
        return (_snapshots(np.stack([p.weights() for p in profiles]) if profiles else np.zeros((0, size)),
                           np.stack(list(slot_ids)) if profiles else np.zeros((0, size), np.int64), before=True),
                ProfileSnapshots.empty(sum(counts), size))
    # Rows: each user's starting state, then one row per token. A row holds the units and ids
    # written there (``written``); its other cells are those of the latest row written above it.
    if len({len(p.tokens) for p in profiles}) > 1:
        raise ModelError(f"profiles of {sorted({p.size for p in profiles})} slots advanced together")
    heads = np.cumsum([0] + counts[:-1]) + np.arange(len(runs))
    units = np.empty((n_rows, size), dtype=np.float64)
    ids = np.empty((n_rows, size), dtype=np.int64)
    units[heads], ids[heads] = np.stack([p.units for p in profiles]), np.stack(list(slot_ids))
    scales, slots, values, new_ids, rescaled = [], [], [], [], []
    get, decays = encode.get, decay != 1.0
    for profile, run in zip(profiles, runs, strict=True):
        add, own = profile.add, profile.units  # (add updates the units in place)
        scales.append(profile.scale)
        for token in run:
            slot = add(token, decay)
            slots.append(slot)
            values.append(own[slot])
            new_ids.append(get(token, oov_id))
            scales.append(profile.scale)
            if decays and profile.scale == 1.0:  # the add rescaled every slot's units (rare)
                rescaled.append((len(scales) - 1, own.copy(), profile.slot_ids(encode, oov_id)))
    token_rows = np.ones(n_rows, dtype=bool)
    token_rows[heads] = False
    rows = np.flatnonzero(token_rows)
    written = np.zeros((n_rows, size), dtype=bool)
    written[heads] = True
    written[rows, slots] = True
    units[rows, slots], ids[rows, slots] = values, new_ids
    for at, all_units, all_ids in rescaled:
        units[at], ids[at], written[at] = all_units, all_ids, True
    # Each cell's source: the latest row at or above it that wrote it (each user's head row did).
    source = np.where(written, np.arange(n_rows)[:, None], 0)
    np.maximum.accumulate(source, axis=0, out=source)
    source = source * size + np.arange(size)
    weights = units.take(source) * np.asarray(scales)[:, None]
    ids = ids.take(source)
    for slot_id, latest in zip(slot_ids, ids[np.append(heads[1:], n_rows) - 1], strict=True):
        slot_id[:] = latest
    return _snapshots(weights[heads], ids[heads], before=True), _snapshots(weights[token_rows], ids[token_rows])


def _snapshots(weights: np.ndarray, ids: np.ndarray, *, before: bool = False) -> ProfileSnapshots:
    """Snapshots from counts [n, size]: probabilities (counts of an empty profile stay 0 with
    ``before``; after an event the mass is never 0) and the total mass."""
    mass = weights.sum(axis=1)
    if before:
        probs = np.divide(weights, mass[:, None], out=weights.copy(), where=mass[:, None] > 0)
    else:
        probs = weights / mass[:, None]
    return ProfileSnapshots(ids.astype(np.int32), probs.astype(np.float32), mass.astype(np.float32))


@lru_cache(maxsize=262_144)
def consumed_bits(token: str, n_bits: int, n_hashes: int) -> tuple[int, ...]:
    """The ``n_hashes`` bit positions of ``token`` in a consumed-action filter of ``n_bits`` bits
    (blake2b: stable across runs, machines and models)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8 * n_hashes).digest()
    return tuple(int.from_bytes(digest[8 * i:8 * i + 8], "little") % n_bits for i in range(n_hashes))


class ConsumedFilter:
    """A Bloom filter of the tokens a user has acted on: never a false "not consumed", rarely a
    false "consumed" (about (1 - exp(-k n / m))^k after n distinct tokens in m bits, k hashes)."""

    __slots__ = ("bits", "n_hashes")

    def __init__(self, n_bits: int, n_hashes: int, bits: np.ndarray | None = None) -> None:
        self.bits = np.zeros(n_bits, dtype=bool) if bits is None else bits
        self.n_hashes = n_hashes

    def add(self, token: str) -> None:
        if self.n_hashes:
            self.bits[list(consumed_bits(token, len(self.bits), self.n_hashes))] = True

    def __contains__(self, token: object) -> bool:
        if not isinstance(token, str) or not self.n_hashes:
            return False
        return bool(self.bits[list(consumed_bits(token, len(self.bits), self.n_hashes))].all())

    def to_bytes(self) -> bytes:
        return np.packbits(self.bits, bitorder="little").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, n_bits: int, n_hashes: int) -> ConsumedFilter:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:n_bits].astype(bool)
        return cls(n_bits, n_hashes, bits)
