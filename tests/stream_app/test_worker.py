"""`stream-app worker` runs the app built from flags, then STREAM_APP_* variables, then defaults."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

import stream_app.worker
from stream_app.cli import worker as worker_command
from stream_app.cli.common import BrokerEndpoint
from stream_app.settings import Settings


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings each worker would have run with (nothing starts)."""
    runs: list[Settings] = []
    monkeypatch.setattr(stream_app.worker, "run", runs.append)
    return runs


def _invoke(args: list[str], env: dict[str, str]) -> None:
    result = CliRunner().invoke(worker_command.worker, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_flags_win_over_the_environment_which_wins_over_defaults(ran: list[Settings]) -> None:
    before = dict(os.environ)
    _invoke(["--broker", "kafka://flag:9092", "--web-port", "7100", "--checkpoint", "/flag.pt"],
            {"STREAM_APP_WEB_PORT": "7000", "STREAM_APP_STATE_DIR": "/env-state", "STREAM_APP_BROKER": "kafka://env:1"})
    [settings] = ran
    assert (settings.broker, settings.web_port, settings.checkpoint) == ("kafka://flag:9092", 7100, "/flag.pt")
    assert settings.state_dir == "/env-state", "no flag: the variable"
    assert settings.traffic_checkpoint is None and settings.partitions == Settings().partitions, "neither: default"
    assert dict(os.environ) == before, "settings reach the app as an object, not through the environment"


def test_every_flag_reaches_the_settings(ran: list[Settings]) -> None:
    _invoke(["--broker", "kafka://b:1", "--web-port", "7101", "--web-host", "0.0.0.0", "--state-dir", "/s",
             "--checkpoint", "/c.pt", "--traffic-checkpoint", "/t.pt"], {})
    [settings] = ran
    assert (settings.broker, settings.web_port, settings.web_host, settings.state_dir, settings.checkpoint,
            settings.traffic_checkpoint) == ("kafka://b:1", 7101, "0.0.0.0", "/s", "/c.pt", "/t.pt")


def test_an_embedded_tansu_broker_sends_one_record_per_batch(ran: list[Settings],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def tansu(broker: str | None) -> Iterator[BrokerEndpoint]:
        assert broker is None, "no broker given: an embedded one"
        yield BrokerEndpoint(url="kafka://127.0.0.1:4321", kind="tansu")

    monkeypatch.setattr(worker_command, "broker_url", tansu)
    _invoke([], {"STREAM_APP_BROKER": ""})
    [settings] = ran
    assert (settings.broker, settings.producer_max_batch) == ("kafka://127.0.0.1:4321", 1)
