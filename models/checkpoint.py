"""Checkpoints: weights plus metadata, saved with torch.save and loaded with weights_only=True."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from models.exceptions import CheckpointError

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "file_digest"]

# Bump when the layout of the saved dict changes; older files are refused with a clear message.
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], *, kind: str, state_dict: dict[str, torch.Tensor],
                    metadata: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a watching worker never reads half a file.

    ``metadata`` must hold only plain types (str, int, float, bool, None, lists, dicts, tensors):
    that is what ``weights_only=True`` can load back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, "kind": kind, "state_dict": state_dict, "metadata": metadata}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        torch.save(payload, tmp)
    os.chmod(tmp.name, 0o644)  # temp files are private; a checkpoint is read by workers of other users
    os.replace(tmp.name, path)
    return path


def load_checkpoint(path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    """Load a checkpoint of ``kind``; never unpickles arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `stream-app train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"checkpoint {path} could not be read ({exc.__class__.__name__}: {exc}); "
                              "it is corrupt or not a stream-app checkpoint") from exc
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a stream-app checkpoint")
    if payload["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {payload['format']}, this version reads "
                              f"{FORMAT_VERSION}; retrain it with `stream-app train`")
    if payload.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {payload.get('kind')!r} model, "
                              f"expected {kind!r}")
    return payload


def file_digest(path: str | os.PathLike[str]) -> str:
    """Short content hash, used in model version strings and data fingerprints."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest[:12]
