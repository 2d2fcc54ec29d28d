"""Session fixtures: the real Apache Kafka broker (KRaft) and the shared data folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.paths import shared_data_dir
from stream_app.broker import BrokerInfo, EmbeddedBroker


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
def data_dir() -> Path:
    """The shared real data; tests that need it skip only when the folder is truly absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (set STREAM_APP_DATA_DIR to its location)")
    return folder
