"""What the model reads, for every row of a series: values, observed flags, time features and the
seasonal profile, and their batches (training chunks, evaluation windows).

The profile track holds, for each row, the profile value the model is fed: on the rows the profile
was fitted on, the leave-one-period-out blend (the row's own day and week left out, so training
never feeds the value to forecast); on the other rows, the fitted blend. It runs ``max horizon``
rows past the end, so every row has its profile ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.exceptions import ModelError
from models.traffic.data import TrafficSeries
from models.traffic.profile import SeasonalProfile

__all__ = ["ModelInputs", "model_inputs", "profile_track", "Batch"]


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch: inputs [batch, time, sensors] and their context, targets [batch, time, sensors, horizons]."""

    values: torch.Tensor
    observed: torch.Tensor
    features: torch.Tensor
    profile: torch.Tensor | None
    profile_ahead: torch.Tensor | None
    targets: torch.Tensor
    target_mask: torch.Tensor

    def model_kwargs(self, use_time_features: bool) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of ``TrafficGRU.forward`` beyond the values."""
        return {"time_features": self.features if use_time_features else None, "observed": self.observed,
                "profile": self.profile, "profile_ahead": self.profile_ahead}


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """Tensors over every row of one series; ``profile`` runs ``max(horizons)`` rows longer."""

    values: torch.Tensor  # [time, sensors] float32, gaps filled
    observed: torch.Tensor  # [time, sensors] bool
    features: torch.Tensor  # [time, 4]
    profile: torch.Tensor | None  # [time + max horizon, sensors] or None
    horizons: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[0])

    def gather(self, rows: torch.Tensor, *, with_targets: bool = True) -> Batch:
        """The batch of absolute ``rows`` [batch, time]; targets are the rows ``horizons`` later
        (zeros and masked where they fall past the end)."""
        horizons = torch.tensor(self.horizons)
        ahead = rows[..., None] + horizons  # [batch, time, horizons]
        profile = profile_ahead = None
        if self.profile is not None:
            profile = self.profile[rows]
            profile_ahead = self.profile[ahead].permute(0, 1, 3, 2)
        inside = ahead < self.n_steps
        safe = torch.where(inside, ahead, torch.zeros_like(ahead))
        if with_targets:
            targets = self.values[safe].permute(0, 1, 3, 2)
            mask = (self.observed[safe] & inside[..., None]).permute(0, 1, 3, 2)
        else:
            targets = mask = torch.empty(0)
        return Batch(values=self.values[rows], observed=self.observed[rows].float(), features=self.features[rows],
                     profile=profile, profile_ahead=profile_ahead, targets=targets, target_mask=mask)


def model_inputs(series: TrafficSeries, horizons: tuple[int, ...], profile: SeasonalProfile | None = None,
                 fitted_rows: slice | None = None) -> ModelInputs:
    """The inputs of ``series``; with ``profile``, its track (leave-one-out on ``fitted_rows``)."""
    track = None
    if profile is not None:
        track = torch.from_numpy(profile_track(series, profile, max(horizons), fitted_rows).astype(np.float32))
    return ModelInputs(values=torch.from_numpy(np.ascontiguousarray(series.speeds, dtype=np.float32)),
                       observed=torch.from_numpy(series.mask.copy()),
                       features=torch.from_numpy(series.time_features()), profile=track,
                       horizons=tuple(int(h) for h in horizons))


def profile_track(series: TrafficSeries, profile: SeasonalProfile, extra: int,
                  fitted_rows: slice | None = None) -> np.ndarray:
    """[time + extra, sensors] the profile fed at each row (module doc)."""
    if profile.n_sensors != series.network.n_sensors:
        raise ModelError(f"profile has {profile.n_sensors} sensors, the series {series.network.n_sensors}")
    local = series.local_ms(extra)
    track = profile.expected(local)
    if fitted_rows is not None:
        start, stop, _ = fitted_rows.indices(series.n_steps)
        part = series.rows(slice(start, stop))
        track[start:stop] = profile.leave_one_out(part.speeds, part.mask, local[start:stop])
    return track
