"""What the train and evaluate jobs share: their error, the shared data sets, the device."""

from __future__ import annotations

from pathlib import Path

import torch

from stream_app import datasets
from stream_app.exceptions import StreamAppError
from stream_app.settings import Settings

__all__ = ["JobError", "shared_folder", "resolve_device"]


class JobError(StreamAppError):
    """A training or evaluation job cannot run; the message says what to change."""


def shared_folder(name: str, data_dir: Path | None, settings: Settings | None = None) -> Path:
    """The folder of the named set (foursquare, diginetica, los-loop): ``data_dir`` first when given, then the
    cache, STREAM_APP_DATA_DIR and ../shared/data; a missing set is a JobError naming the fetch command."""
    try:
        return datasets.locate(name, settings, first=data_dir)
    except datasets.DatasetError as exc:
        raise JobError(str(exc)) from exc


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without one is a JobError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise JobError(f"--device cuda, but torch {torch.__version__} sees no CUDA device "
                       f"(built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise JobError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name
