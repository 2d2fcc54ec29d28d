"""The named public data sets: where each comes from, how to fetch it into the cache, and where the loaders look.

Lookup order for every loader: a ``--data-dir`` given on the command line, the cache
(``$STREAM_APP_CACHE/data``), ``$STREAM_APP_DATA_DIR``, then ``../shared/data`` beside the project.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models import paths
from stream_app.exceptions import StreamAppError
from stream_app.settings import Settings

__all__ = ["DataFile", "Dataset", "DatasetError", "CATALOGUE", "dataset", "cache_root", "search_folders", "find",
           "locate", "fetch_dataset", "import_dataset", "file_sha256"]

Progress = Callable[["DataFile", int], None]  # (file, bytes done so far); called at 0, per chunk and at the end

_CHUNK = 1 << 16
_TIMEOUT_S = 60.0
_SCHEMES = ("https", "http", "file")


class DatasetError(StreamAppError):
    """A data set is missing, unknown, or failed its download or checksum; the message says what to run."""


@dataclass(frozen=True)
class DataFile:
    """One published file: its name in the set's folder, where it is downloaded from, and its checksum."""

    name: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Dataset:
    """A named data set: ``stream-app datasets fetch <name>`` puts its files in ``<cache>/data/<folder>/``."""

    name: str
    folder: str
    title: str
    source: str
    licence: str
    files: tuple[DataFile, ...]
    citation: str | None = None

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _raw(repository: str, commit: str, path: str) -> str:
    # Pinned to a commit: the checksums below hold for as long as GitHub serves that commit.
    return f"https://raw.githubusercontent.com/{repository}/{commit}/{path}"


_TGCN = ("lehaifeng/T-GCN", "219a2346f5bf68d54d91a948e7a41a08f9edc46b")
_STAN = ("yingtaoluo/Spatial-Temporal-Attention-Network-for-POI-Recommendation",
         "8b82f2840e7f435a25398e1d42a835fc4129a4e2")
_SRGNN = ("CRIPAC-DIG/SR-GNN", "e21cfa431f74c25ae6e4ae9261deefe11d1cb488")

CATALOGUE: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        name="los-loop", folder="los-loop",
        title="Los-loop: Los Angeles loop-detector speeds, 207 sensors, 7 days at 5 min (March 2012)",
        source="https://github.com/lehaifeng/T-GCN (data/)",
        licence="Not stated for the data (no licence at the repository's root; its T-GCN-PyTorch code folder "
                "is MIT); derived from METR-LA (Li et al., DCRNN, ICLR 2018). See the source repository.",
        files=(DataFile("los_speed.csv", _raw(*_TGCN, "data/los_speed.csv"),
                        "7b732d86ae32b2930595becba28aff39dacbfb2197e250fc0332e1744ce2cbf4", 3_402_125),
               DataFile("los_adj.csv", _raw(*_TGCN, "data/los_adj.csv"),
                        "7a6eb41e10677992b5af50f5ab187c6c05c5c3a92cb973950cfddbf857361e76", 111_686))),
    Dataset(
        name="foursquare", folder="foursquare-nyc",
        title="Foursquare NYC check-ins: 1,083 users, 5,135 POIs, about 10 months (2012-2013)",
        source="https://github.com/yingtaoluo/Spatial-Temporal-Attention-Network-for-POI-Recommendation (data/)",
        licence="Not stated in the STAN repository; from the Foursquare NYC data set of Yang et al., "
                "whose authors ask to be cited. See the source repository.",
        citation="Dingqi Yang, Daqing Zhang, Vincent W. Zheng, Zhiyong Yu. Modeling User Activity Preference by "
                 "Leveraging User Spatial Temporal Characteristics in LBSNs. IEEE Transactions on Systems, Man, "
                 "and Cybernetics: Systems (TSMC), 45(1), 129-142, 2015.",
        files=(DataFile("NYC.npy", _raw(*_STAN, "data/NYC.npy"),
                        "9e28b974a52d233e201ff9e82e1c076818c90b1e8f25f4ef93daaf1d7e8ddf55", 1_775_384),
               DataFile("NYC_POI.npy", _raw(*_STAN, "data/NYC_POI.npy"),
                        "f709f4796ca117d0b96ad2d0201a9869920364e2c476c4362e746740ded08d95", 123_368))),
    Dataset(
        name="diginetica", folder="diginetica-sample",
        title="Diginetica sample: e-commerce item views, 2,986 sessions, 7,139 items (Jan-Jun 2016)",
        source="https://github.com/CRIPAC-DIG/SR-GNN (datasets/)",
        licence="Not stated in the SR-GNN repository; a sample of the CIKM Cup 2016 (DIGINETICA) "
                "competition data. See the source repository.",
        citation="Shu Wu, Yuyuan Tang, Yanqiao Zhu, Liang Wang, Xing Xie, Tieniu Tan. Session-based "
                 "Recommendation with Graph Neural Networks. AAAI 2019, 33(1), 346-353 (the SR-GNN README "
                 "asks for it when its code is used).",
        files=(DataFile("sample_train-item-views.csv", _raw(*_SRGNN, "datasets/sample_train-item-views.csv"),
                        "98da96e05c87ef12b739e4bfd9bc7b4864106ee77371f1db9eb4413e3f78d37e", 395_354),)),
)}


def dataset(name: str) -> Dataset:
    """The catalogue entry called ``name`` (its folder name is accepted too)."""
    for entry in CATALOGUE.values():
        if name in (entry.name, entry.folder):
            return entry
    raise DatasetError(f"unknown data set {name!r}; the named sets are {', '.join(CATALOGUE)} "
                       f"(`stream-app datasets` lists them)")


def cache_root(settings: Settings) -> Path:
    """Where ``stream-app datasets fetch`` puts the sets: ``<cache_dir>/data``."""
    return Path(settings.cache_dir).expanduser() / "data"


def search_folders(settings: Settings, first: Path | None = None) -> list[Path]:
    """The folders every loader searches, in order: ``first`` (a --data-dir), cache, data_dir, ../shared/data."""
    folders = [Path(first)] if first is not None else []
    folders.append(cache_root(settings))
    if settings.data_dir:
        folders.append(Path(settings.data_dir).expanduser())
    folders.append(paths.SHARED_DATA_DIR)
    return folders


def find(name: str, settings: Settings, first: Path | None = None) -> Path | None:
    """The folder holding every file of the set ``name``, searched as ``search_folders`` says; None if absent."""
    entry = dataset(name)
    return paths.find_dataset(entry.folder, entry.file_names, search_folders(settings, first))


def locate(name: str, settings: Settings | None = None, first: Path | None = None) -> Path:
    """Like ``find``, but a missing set is a DatasetError that says where it looked and how to fetch it."""
    settings = Settings.from_env() if settings is None else settings
    found = find(name, settings, first)
    if found is None:
        raise DatasetError(_missing_message(dataset(name), search_folders(settings, first)))
    return found


def _missing_message(entry: Dataset, searched: list[Path]) -> str:
    where = ", ".join(str(root / entry.folder) for root in searched)
    return (f"{entry.title.split(':')[0]} data not found: looked for {', '.join(entry.file_names)} in {where}. "
            f"Get it with `stream-app datasets fetch {entry.name}` (downloads {entry.size / 1e6:.1f} MB from "
            f"{entry.source}), or `stream-app datasets fetch {entry.name} --from DIR` to import an offline copy; "
            f"or point --data-dir or STREAM_APP_DATA_DIR at a folder holding {entry.folder}/.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_dataset(name: str, settings: Settings, *, base_url: str | None = None,
                  progress: Progress | None = None) -> Path:
    """Download the set's files into ``<cache>/data/<folder>/``, each checked against its sha256.

    ``base_url`` replaces the original source: files are read from ``<base_url>/<folder>/<file>``
    (a mirror, or a ``file://`` folder). Files already in the cache with the right checksum are kept.
    """
    entry = dataset(name)
    target = cache_root(settings) / entry.folder
    for data_file in entry.files:
        url = data_file.url if base_url is None else f"{base_url.rstrip('/')}/{entry.folder}/{data_file.name}"
        _store(url, target / data_file.name, data_file, progress,
               retry=f"Run it again, or import a verified copy with `stream-app datasets fetch {entry.name} "
                     f"--from DIR`",
               unreachable=f"Without internet access, copy the files from a machine that has it and import "
                           f"them with `stream-app datasets fetch {entry.name} --from DIR`")
    return target


def import_dataset(name: str, source: Path, settings: Settings, *, progress: Progress | None = None) -> Path:
    """Copy an offline copy of the set into the cache with the same checksum check as a download.

    ``source`` holds the set's folder (``source/<folder>/<files>``) or the files themselves.
    """
    entry = dataset(name)
    found = paths.find_dataset(entry.folder, entry.file_names, [source])
    if found is None:
        raise DatasetError(f"{source} holds neither {entry.folder}/ with {', '.join(entry.file_names)} nor those "
                           f"files; point --from at the folder that holds them")
    target = cache_root(settings) / entry.folder
    for data_file in entry.files:
        _store((found / data_file.name).resolve().as_uri(), target / data_file.name, data_file, progress,
               retry=f"That copy is not the published file: fetch it with `stream-app datasets fetch {entry.name}`",
               unreachable="Check that the file is readable")
    return target


def _store(url: str, target: Path, expected: DataFile, progress: Progress | None, *, retry: str,
           unreachable: str) -> None:
    """Stream ``url`` to a temporary file beside ``target``, check size and sha256, then rename it into place."""
    report = progress or (lambda _file, _done: None)
    if target.is_file():
        if target.stat().st_size == expected.size and file_sha256(target) == expected.sha256:
            report(expected, expected.size)
            return
        target.unlink()  # a damaged cached copy must not be found by the loaders while it is replaced
    if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
        raise DatasetError(f"cannot fetch {url}: only {', '.join(_SCHEMES)} URLs are supported")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    partial = Path(temporary)
    try:
        digest, size = _download(url, handle, expected, report, unreachable)
        if size > expected.size:
            raise DatasetError(f"{expected.name} from {url} is larger than the expected {expected.size} bytes; "
                               f"nothing was kept. {retry}.")
        if size != expected.size or digest != expected.sha256:
            raise DatasetError(f"{expected.name} from {url} failed its checksum: sha256 {digest} ({size} bytes), "
                               f"expected {expected.sha256} ({expected.size} bytes); nothing was kept. {retry}.")
        partial.chmod(0o644)  # mkstemp makes it private; the data sets are public
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _download(url: str, handle: int, expected: DataFile, report: Progress, unreachable: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    report(expected, 0)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > expected.size:  # a wrong or endless response: stop early instead of filling the disk
                    break
                digest.update(chunk)
                out.write(chunk)
                report(expected, size)
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetError(f"cannot read {url}: {reason}. {unreachable}.") from exc
    return digest.hexdigest(), size
