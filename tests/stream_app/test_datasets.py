"""Named data sets: fetch over file:// URLs with checksums, --from imports, the lookup order, and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from models import paths
from stream_app import datasets
from stream_app.cli import cli
from stream_app.datasets import DataFile, Dataset, DatasetError
from stream_app.jobs import JobError, shared_folder
from stream_app.settings import Settings

CONTENTS = {"a.csv": b"sensor,speed\ns1,61.5\n", "b.bin": bytes(range(256)) * 1_000}  # b.bin spans chunks


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """A two-file set published under ``tmp_path/published/tiny-set``, added to the catalogue as ``tiny``."""
    published = tmp_path / "published" / "tiny-set"
    published.mkdir(parents=True)
    files = []
    for name, content in CONTENTS.items():
        (published / name).write_bytes(content)
        files.append(DataFile(name, (published / name).as_uri(), hashlib.sha256(content).hexdigest(), len(content)))
    entry = Dataset(name="tiny", folder="tiny-set", title="Tiny: a test set", source="tests", licence="none",
                    files=tuple(files))
    monkeypatch.setitem(datasets.CATALOGUE, "tiny", entry)
    return entry


def _with_file(entry: Dataset, monkeypatch: pytest.MonkeyPatch, name: str, **changes: object) -> Dataset:
    files = tuple(dataclasses.replace(f, **changes) if f.name == name else f for f in entry.files)
    changed = dataclasses.replace(entry, files=files)
    monkeypatch.setitem(datasets.CATALOGUE, entry.name, changed)
    return changed


def _settings(cache: Path, data_dir: Path | None = None) -> Settings:
    return Settings(cache_dir=str(cache), data_dir=None if data_dir is None else str(data_dir))


def _write_set(root: Path, entry: Dataset) -> Path:
    folder = root / entry.folder
    folder.mkdir(parents=True)
    for name, content in CONTENTS.items():
        (folder / name).write_bytes(content)
    return folder


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_fetch_from_a_file_url_verifies_and_the_loader_finds_the_set(tiny: Dataset, no_local_data: Path) -> None:
    seen: dict[str, list[int]] = {}
    folder = datasets.fetch_dataset("tiny", Settings.from_env(),
                                    progress=lambda f, done: seen.setdefault(f.name, []).append(done))
    assert folder == no_local_data / "data" / "tiny-set"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == CONTENTS  # no temporary file left beside them
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())
    assert seen["b.bin"][0] == 0 and seen["b.bin"][-1] == len(CONTENTS["b.bin"]) and len(seen["b.bin"]) > 3
    assert datasets.locate("tiny") == folder


def test_fetch_with_a_base_url_reads_base_folder_file(tiny: Dataset, tmp_path: Path, no_local_data: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    _write_set(mirror, tiny)
    _with_file(tiny, monkeypatch, "a.csv", url="https://invalid.invalid/a.csv")  # the original is out of reach
    folder = datasets.fetch_dataset("tiny", Settings.from_env(), base_url=mirror.as_uri() + "/")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == CONTENTS


def test_checksum_mismatch_fails_and_keeps_no_file(tiny: Dataset, no_local_data: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _with_file(tiny, monkeypatch, "b.bin", sha256="0" * 64)
    with pytest.raises(DatasetError, match="b.bin .* failed its checksum.*nothing was kept"):
        datasets.fetch_dataset("tiny", Settings.from_env())
    folder = no_local_data / "data" / "tiny-set"
    assert [p.name for p in folder.iterdir()] == ["a.csv"]  # the verified file stays; no partial b.bin
    assert datasets.find("tiny", Settings.from_env()) is None


def test_a_file_larger_than_published_is_refused(tiny: Dataset, no_local_data: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _with_file(tiny, monkeypatch, "b.bin", size=70_000)
    with pytest.raises(DatasetError, match="larger than the expected 70000 bytes"):
        datasets.fetch_dataset("tiny", Settings.from_env())
    assert not (no_local_data / "data" / "tiny-set" / "b.bin").exists()


def test_a_damaged_cached_file_is_downloaded_again(tiny: Dataset, no_local_data: Path) -> None:
    folder = datasets.fetch_dataset("tiny", Settings.from_env())
    (folder / "b.bin").write_bytes(b"damaged")
    datasets.fetch_dataset("tiny", Settings.from_env())
    assert (folder / "b.bin").read_bytes() == CONTENTS["b.bin"]


def test_an_unreachable_source_names_the_offline_import(tiny: Dataset, no_local_data: Path,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _with_file(tiny, monkeypatch, "a.csv", url=(tmp_path / "gone.csv").as_uri())
    with pytest.raises(DatasetError, match="stream-app datasets fetch tiny --from DIR"):
        datasets.fetch_dataset("tiny", Settings.from_env())
    assert not any((no_local_data / "data" / "tiny-set").iterdir())


@pytest.mark.parametrize("layout", ["set folder inside", "files directly"])
def test_import_from_an_offline_copy(tiny: Dataset, tmp_path: Path, no_local_data: Path, layout: str) -> None:
    copy = tmp_path / "usb-stick"
    folder = _write_set(copy, tiny)
    source = copy if layout == "set folder inside" else folder
    imported = datasets.import_dataset("tiny", source, Settings.from_env())
    assert imported == no_local_data / "data" / "tiny-set"
    assert {p.name: p.read_bytes() for p in imported.iterdir()} == CONTENTS


def test_import_checks_the_checksum_and_says_what_is_missing(tiny: Dataset, tmp_path: Path,
                                                             no_local_data: Path) -> None:
    folder = _write_set(tmp_path / "copy", tiny)
    (folder / "a.csv").write_bytes(b"sensor,speed\ns1,99.9\n")  # same size, other bytes
    with pytest.raises(DatasetError, match="a.csv .* failed its checksum"):
        datasets.import_dataset("tiny", folder, Settings.from_env())
    assert not (no_local_data / "data" / "tiny-set" / "a.csv").exists()
    with pytest.raises(DatasetError, match="holds neither tiny-set/ with a.csv, b.bin"):
        datasets.import_dataset("tiny", tmp_path / "copy" / "..", Settings.from_env())


def test_lookup_order_is_data_dir_option_cache_data_dir_then_shared(tiny: Dataset, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    roots = {name: tmp_path / name for name in ("option", "cache", "data-dir", "shared")}
    monkeypatch.setattr(paths, "SHARED_DATA_DIR", roots["shared"])
    settings = _settings(roots["cache"], roots["data-dir"])
    found = {name: _write_set(root if name != "cache" else root / "data", tiny) for name, root in roots.items()}
    assert datasets.locate("tiny", settings, first=roots["option"]) == found["option"]
    assert datasets.locate("tiny", settings) == found["cache"]
    for absent, then in (("cache", "data-dir"), ("data-dir", "shared")):
        for path in found[absent].iterdir():
            path.unlink()
        assert datasets.locate("tiny", settings) == found[then]
    assert datasets.locate("tiny", settings, first=found["option"]) == found["option"]  # the set's folder itself


def test_a_missing_set_names_the_fetch_command(no_local_data: Path) -> None:
    with pytest.raises(JobError) as caught:
        shared_folder("foursquare", None)
    message = str(caught.value)
    assert "stream-app datasets fetch foursquare`" in message and "--from DIR" in message
    assert str(no_local_data / "data" / "foursquare-nyc") in message and "NYC_POI.npy" in message


def test_replay_of_a_missing_set_fails_before_any_broker_starts(no_local_data: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAM_APP_BROKER", raising=False)
    result = invoke("replay", "diginetica", "--limit", "1")
    assert result.exit_code == 1 and "stream-app datasets fetch diginetica" in result.output
    assert "Embedded" not in result.output


def test_datasets_command_lists_the_three_sets(no_local_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that no phrase is wrapped
    result = invoke("datasets")
    assert result.exit_code == 0, result.output
    for entry in datasets.CATALOGUE.values():
        row = next(line for line in result.output.splitlines() if f" {entry.name} " in line)
        assert entry.title in row and f"{entry.size / 1e6:.1f} MB" in row
        assert f"not found: stream-app datasets fetch {entry.name}" in row
        assert f"source: {entry.source}" in result.output and f"licence: {entry.licence}" in result.output


@pytest.mark.data
def test_catalogue_checksums_are_those_of_the_shared_copies(shared_data: Path) -> None:
    for entry in datasets.CATALOGUE.values():
        for data_file in entry.files:
            path = shared_data / entry.folder / data_file.name
            assert (path.stat().st_size, datasets.file_sha256(path)) == (data_file.size, data_file.sha256), path
            assert data_file.url.startswith("https://raw.githubusercontent.com/") and data_file.url.endswith(
                "/" + data_file.name)


@pytest.mark.data
def test_cli_fetch_from_a_file_mirror_then_import_then_list(shared_data: Path, no_local_data: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke("datasets", "fetch", "diginetica", "--base-url", shared_data.as_uri())
    assert result.exit_code == 0, result.output
    cached = no_local_data / "data" / "diginetica-sample"
    assert "sha256 verified" in result.output and shared_folder("diginetica", None) == cached
    result = invoke("datasets", "fetch", "los-loop", "--from", shared_data / "los-loop")
    assert result.exit_code == 0, result.output
    assert shared_folder("los-loop", None) == no_local_data / "data" / "los-loop"
    monkeypatch.setenv("COLUMNS", "400")
    listing = invoke("datasets").output
    assert str(cached) in listing and "not found: stream-app datasets fetch foursquare" in listing


def test_cli_fetch_failure_is_an_error_with_the_reason(tmp_path: Path, no_local_data: Path) -> None:
    result = invoke("datasets", "fetch", "foursquare", "--from", tmp_path)
    assert result.exit_code == 1 and "holds neither foursquare-nyc/ with NYC.npy, NYC_POI.npy" in result.output
    result = invoke("datasets", "fetch", "nowhere")
    assert result.exit_code == 2 and "los-loop" in result.output
