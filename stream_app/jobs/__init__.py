"""What the train and evaluate jobs share: their error, the shared data sets, the device."""

from __future__ import annotations

from pathlib import Path

import torch

from models.paths import shared_data_dir
from stream_app.exceptions import StreamAppError

__all__ = ["JobError", "shared_folder", "resolve_device"]

_SHARED = {  # name: (folder, files, title, where the originals are)
    "foursquare": ("foursquare-nyc", ("NYC.npy", "NYC_POI.npy"), "Foursquare NYC",
                   "the STAN repository, yingtaoluo/Spatial-Temporal-Attention-Network-for-POI-Recommendation, data/"),
    "diginetica": ("diginetica-sample", ("sample_train-item-views.csv",), "Diginetica sample",
                   "the SR-GNN repository, CRIPAC-DIG/SR-GNN, datasets/"),
    "los-loop": ("los-loop", ("los_speed.csv", "los_adj.csv"), "Los-loop",
                 "the T-GCN repository, lehaifeng/T-GCN, data/"),
}


class JobError(StreamAppError):
    """A training or evaluation job cannot run; the message says what to change."""


def shared_folder(name: str, data_dir: Path | None) -> Path:
    sub, files, title, origin = _SHARED[name]
    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    folder = root / sub
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        how = "--data-dir" if data_dir is not None else "STREAM_APP_DATA_DIR (or --data-dir)"
        raise JobError(f"{title} data not found: looked for {', '.join(files)} in {folder} "
                       f"(missing: {', '.join(missing)}). Put the files there, or set {how} to the folder "
                       f"that holds {sub}/ (originals: {origin}).")
    return folder


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
