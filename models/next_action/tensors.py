"""Encoded events and profile snapshots as padded tensors, the next-action model's inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from models.exceptions import ModelError
from models.next_action.features import N_DENSE, EncodedEvents
from models.next_action.history import ProfileSnapshots

__all__ = ["EventTensors", "ProfileTensors", "padded_positions"]

_COLUMNS = (("tokens", (), np.int64), ("cells", (), np.int64), ("ts_ms", (), np.int64),
            ("lat", (), np.float64), ("lon", (), np.float64), ("dense", (N_DENSE,), np.float32))


@dataclass(frozen=True)
class EventTensors:
    """Encoded events as tensors with a common leading shape [*lead] ([batch, time] or [batch]).

    tokens/cells/ts_ms int64 [*lead]; lat/lon float64 [*lead]; dense float32 [*lead, N_DENSE];
    consumed int64 [*lead, hashes] (each event's bits in the consumed-action filter);
    mask bool [*lead] (False = padding).
    """

    tokens: Tensor
    cells: Tensor
    ts_ms: Tensor
    lat: Tensor
    lon: Tensor
    dense: Tensor
    consumed: Tensor
    mask: Tensor

    @classmethod
    def collate(cls, sequences: Sequence[EncodedEvents], *, align: str = "left") -> EventTensors:
        """Pad sequences to [batch, time]; ``align="right"`` puts the padding first (windows)."""
        if align not in ("left", "right"):
            raise ModelError(f"align must be 'left' or 'right', got {align!r}")
        width = max([len(s) for s in sequences] + [1])
        hashes = max([s.consumed.shape[1] for s in sequences] + [0])
        columns = _COLUMNS + (("consumed", (hashes,), np.int64),)
        arrays = {name: np.zeros((len(sequences), width) + shape, dtype=dtype) for name, shape, dtype in columns}
        mask = np.zeros((len(sequences), width), dtype=bool)
        for row, seq in enumerate(sequences):
            n = len(seq)
            cols = slice(0, n) if align == "left" else slice(width - n, width)
            for name, _, _ in columns:
                if name != "consumed" or seq.consumed.shape[1] == hashes:
                    arrays[name][row, cols] = getattr(seq, name)
            mask[row, cols] = True
        return cls(mask=torch.from_numpy(mask), **{k: torch.from_numpy(v) for k, v in arrays.items()})

    @classmethod
    def pad_rows(cls, rows: np.ndarray, lengths: np.ndarray, *, align: str = "left") -> EventTensors:
        """``collate`` for sequences given as one record array (``features.event_row_dtype``):
        ``rows`` holds them back to back, ``lengths[i]`` rows for sequence i."""
        at_rows, at_cols, width = padded_positions(lengths, align=align)
        padded = np.zeros((len(lengths), width), dtype=rows.dtype)
        padded[at_rows, at_cols] = rows
        mask = np.zeros((len(lengths), width), dtype=bool)
        mask[at_rows, at_cols] = True
        return cls(mask=torch.from_numpy(mask),
                   **{f.name: torch.from_numpy(np.ascontiguousarray(padded[f.name])) for f in fields(cls)
                      if f.name != "mask"})

    def to(self, device: torch.device | str) -> EventTensors:
        return EventTensors(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def map(self, fn: Callable[[Tensor], Tensor]) -> EventTensors:
        """Apply ``fn`` to every field (e.g. an index or ``flip``)."""
        return EventTensors(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def cat(parts: Sequence[EventTensors], dim: int = 1) -> EventTensors:
        return EventTensors(**{f.name: torch.cat([getattr(p, f.name) for p in parts], dim=dim)
                               for f in fields(EventTensors)})


@dataclass(frozen=True)
class ProfileTensors:
    """Profile snapshots as tensors over [*lead, slots]: ids int64, probs float32 (each snapshot's
    counts normalized; 0 for an empty slot), and mass float32 [*lead] (the total count)."""

    ids: Tensor
    probs: Tensor
    mass: Tensor

    @classmethod
    def collate(cls, snapshots: Sequence[ProfileSnapshots]) -> ProfileTensors:
        """Left-aligned [batch, time, slots] (padding last, as ``EventTensors.collate``)."""
        width = max([len(s) for s in snapshots] + [1])
        slots = max([s.ids.shape[1] for s in snapshots] + [0])
        ids = np.zeros((len(snapshots), width, slots), dtype=np.int64)
        probs = np.zeros((len(snapshots), width, slots), dtype=np.float32)
        mass = np.zeros((len(snapshots), width), dtype=np.float32)
        for row, snap in enumerate(snapshots):
            n, k = len(snap), snap.ids.shape[1]
            ids[row, :n, :k], probs[row, :n, :k], mass[row, :n] = snap.ids, snap.probs, snap.mass
        return cls(torch.from_numpy(ids), torch.from_numpy(probs), torch.from_numpy(mass))

    @classmethod
    def pad(cls, snapshots: ProfileSnapshots, lengths: np.ndarray) -> ProfileTensors:
        """``collate`` for sequences of snapshots given back to back (``lengths[i]`` for sequence i)."""
        at_rows, at_cols, width = padded_positions(lengths, align="left")
        slots = snapshots.ids.shape[1]
        ids = np.zeros((len(lengths), width, slots), dtype=np.int64)
        probs = np.zeros((len(lengths), width, slots), dtype=np.float32)
        mass = np.zeros((len(lengths), width), dtype=np.float32)
        ids[at_rows, at_cols], probs[at_rows, at_cols], mass[at_rows, at_cols] = \
            snapshots.ids, snapshots.probs, snapshots.mass
        return cls(torch.from_numpy(ids), torch.from_numpy(probs), torch.from_numpy(mass))

    @classmethod
    def of(cls, snapshots: ProfileSnapshots) -> ProfileTensors:
        """One snapshot per row as [batch, slots] (``stack`` of them one by one)."""
        return cls(torch.from_numpy(snapshots.ids.astype(np.int64)), torch.from_numpy(snapshots.probs),
                   torch.from_numpy(snapshots.mass))

    @classmethod
    def stack(cls, snapshots: Sequence[ProfileSnapshots]) -> ProfileTensors:
        """One snapshot each ([1, slots]) as [batch, slots]."""
        collated = cls.collate(snapshots)
        return cls(collated.ids[:, 0], collated.probs[:, 0], collated.mass[:, 0])

    def to(self, device: torch.device | str) -> ProfileTensors:
        return ProfileTensors(self.ids.to(device), self.probs.to(device), self.mass.to(device))

    def map(self, fn: Callable[[Tensor], Tensor]) -> ProfileTensors:
        return ProfileTensors(fn(self.ids), fn(self.probs), fn(self.mass))

    @property
    def slots(self) -> int:
        return int(self.ids.shape[-1])


def padded_positions(lengths: np.ndarray, *, align: str = "left") -> tuple[np.ndarray, np.ndarray, int]:
    """Where the elements of sequences given back to back (``lengths[i]`` for sequence i) go in
    a padded [batch, width] array: their rows, their columns, and the width (the longest
    sequence, at least 1). ``align="right"`` puts the padding first."""
    if align not in ("left", "right"):
        raise ModelError(f"align must be 'left' or 'right', got {align!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    cols = np.arange(len(rows)) - starts[rows]
    if align == "right":
        cols += width - lengths[rows]
    return rows, cols, width
