"""Session fixtures: the real Apache Kafka broker (KRaft) and the shared data folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models import paths
from stream_app.broker import BrokerInfo, EmbeddedBroker
from stream_app.settings import Settings


@pytest.fixture(scope="session")
def kafka() -> Iterator[BrokerInfo]:
    """A single-node Apache Kafka broker on a free loopback port, for the whole session.

    Always the real Apache Kafka (never the Tansu fallback): a missing JDK or Maven fails the
    integration tests instead of weakening them.
    """
    broker = EmbeddedBroker(kind="kafka")
    info = broker.start()
    try:
        yield info
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data sets (los-loop/, foursquare-nyc/, diginetica-sample/): $STREAM_APP_DATA_DIR,
    else ../shared/data. The one place that decides the skip: only when that folder is truly absent; a set
    missing from a folder that exists fails its tests instead."""
    configured = Settings.from_env().data_dir
    folder = Path(configured).expanduser() if configured else paths.SHARED_DATA_DIR
    if not folder.is_dir():
        pytest.skip(f"shared data folder absent: {folder} (set STREAM_APP_DATA_DIR to a folder holding the sets, "
                    f"or see docs/datasets.md)")
    return folder


@pytest.fixture
def no_local_data(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make every data-set lookup come back empty: cache, STREAM_APP_DATA_DIR and ../shared/data point at
    empty folders. Returns the empty cache folder (STREAM_APP_CACHE)."""
    root = tmp_path_factory.mktemp("no-local-data")
    monkeypatch.setenv("STREAM_APP_CACHE", str(root / "cache"))
    monkeypatch.setenv("STREAM_APP_DATA_DIR", str(root / "data-dir"))
    monkeypatch.setattr(paths, "SHARED_DATA_DIR", root / "shared-data")
    return root / "cache"
