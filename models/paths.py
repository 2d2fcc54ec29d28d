"""Where the shared real data sets live: $STREAM_APP_DATA_DIR, else ../shared/data beside the project."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The folder holding los-loop/, foursquare-nyc/ and diginetica-sample/ (may not exist)."""
    configured = os.environ.get("STREAM_APP_DATA_DIR")
    return Path(configured) if configured else _PROJECT_ROOT.parent / "shared" / "data"
