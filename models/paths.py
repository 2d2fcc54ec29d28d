"""Finding a named data set's folder among the folders a caller searches; nothing here reads the environment."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["SHARED_DATA_DIR", "shared_data_dir", "find_dataset", "dataset_candidates"]

# ../shared/data beside the project: the last place the app searches (see stream_app.datasets).
SHARED_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def shared_data_dir() -> Path:
    """``../shared/data`` beside the project, holding los-loop/, foursquare-nyc/, ... (may not exist)."""
    return SHARED_DATA_DIR


def dataset_candidates(folder: str, search: Iterable[Path | str]) -> list[Path]:
    """Where ``folder``'s files may be, in order: ``root/folder``, then the root itself (a root may be the
    set's own folder, as in ``--data-dir ../shared/data/los-loop``), for each root in turn."""
    return [path for root in map(Path, search) for path in (root / folder, root)]


def find_dataset(folder: str, files: Sequence[str], search: Iterable[Path | str]) -> Path | None:
    """The first candidate folder (see ``dataset_candidates``) that holds every one of ``files``, else None."""
    for candidate in dataset_candidates(folder, search):
        if all((candidate / name).is_file() for name in files):
            return candidate
    return None
