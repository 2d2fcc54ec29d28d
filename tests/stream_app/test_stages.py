"""STREAM_APP_STAGES / ``stream-app worker --stages``: which of the three stages one worker runs.

A worker builds only the parts of its stages, its transports share one set of series whichever of
them run, and the query pages of an absent stage answer a 404 that says which worker to ask.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

import stream_app.worker
from stream_app.app import StreamApp, create_app
from stream_app.cli import worker as worker_command
from stream_app.exceptions import ConfigError
from stream_app.settings import STAGES, Settings


def test_all_three_stages_by_default():
    assert Settings().stages == Settings.from_env({}).stages == STAGES == ("behavior", "cells", "traffic")


def test_a_comma_separated_subset_is_parsed_in_stage_order():
    assert Settings.from_env({"STREAM_APP_STAGES": " traffic, cells "}).stages == ("cells", "traffic")
    assert Settings.from_env({}, stages="behavior").stages == ("behavior",)
    assert Settings.from_env({"STREAM_APP_STAGES": "cells,cells"}).stages == ("cells",)


def test_stages_round_trip_through_the_environment():
    settings = Settings.from_env({}, stages="cells,traffic")
    assert Settings.from_env(settings.as_env()).stages == ("cells", "traffic")
    assert settings.as_env()["STREAM_APP_STAGES"] == "cells,traffic"


@pytest.mark.parametrize(("value", "unknown"), [("behaviour", "behaviour"), ("cells,trafic", "trafic"),
                                               ("all", "all")])
def test_an_unknown_stage_names_it_and_the_choices(value: str, unknown: str):
    with pytest.raises(ConfigError, match="STREAM_APP_STAGES") as raised:
        Settings.from_env({"STREAM_APP_STAGES": value})
    message = str(raised.value)
    assert f"unknown stages {unknown!r}" in message, message
    assert "behavior,cells,traffic" in message and "--stages cells,traffic" in message, "the fix is in the message"


def test_no_stage_at_all_is_an_error_not_an_idle_worker():
    with pytest.raises(ConfigError, match="names no stage"):
        Settings.from_env({}, stages=" , ")


def test_the_faust_hot_path_runs_every_stage_or_none():
    with pytest.raises(ConfigError, match="STREAM_APP_HOT_PATH=transport") as raised:
        Settings.from_env({"STREAM_APP_HOT_PATH": "faust", "STREAM_APP_STAGES": "behavior"})
    assert "unset STREAM_APP_STAGES" in str(raised.value), "the message says the fix"
    assert Settings.from_env({"STREAM_APP_HOT_PATH": "faust", "STREAM_APP_STAGES": "traffic,cells,behavior"}).stages \
        == STAGES, "all three, in any order, are fine"


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    runs: list[Settings] = []
    monkeypatch.setattr(stream_app.worker, "run", runs.append)
    return runs


def test_the_worker_flag_wins_over_the_variable(ran: list[Settings]):
    result = CliRunner().invoke(worker_command.worker, ["--broker", "kafka://b:1", "--stages", "cells,traffic"],
                                env={"STREAM_APP_STAGES": "behavior"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [settings.stages for settings in ran] == [("cells", "traffic")]


def test_a_bad_flag_is_a_usage_error_with_the_fix(ran: list[Settings]):
    result = CliRunner().invoke(worker_command.worker, ["--broker", "kafka://b:1", "--stages", "cels"])
    assert result.exit_code == 2 and not ran
    assert "'cels'" in result.output and "behavior,cells,traffic" in result.output, result.output
    assert "Traceback" not in result.output


def _app(stages: str, **settings: Any) -> StreamApp:
    return create_app(Settings.from_env({}, stages=stages, app_id=f"stages-{stages.replace(',', '-')}", **settings),
                      registry=CollectorRegistry())


@pytest.mark.parametrize("stages", ["behavior", "cells", "traffic", "cells,traffic", "behavior,cells",
                                    "behavior,traffic", "behavior,cells,traffic"])
def test_only_the_selected_stages_are_built(stages: str):
    app = _app(stages)
    selected = set(stages.split(","))
    assert (app.behavior is not None, app.hot_path is not None) == ("behavior" in selected,) * 2
    assert (app.cells is not None) == ("cells" in selected)
    assert (app.traffic is not None, app.networks is not None) == ("traffic" in selected,) * 2
    assert ("network-steps" in app.faust.agents) == ("traffic" in selected), "traffic stage 2 is a Faust agent"
    assert ("network-state" in app.faust.tables) == ("traffic" in selected), \
        "a worker without traffic does not take network-state partitions from those that step networks"
    # /metrics: every combination exports the transport series once (no duplicate registration)
    exported = generate_latest(app.metrics.registry).decode()
    assert "stream_app_transport_batch_records" in exported and "stream_app_events_consumed" in exported


def test_transports_of_one_worker_share_one_set_of_series():
    app = _app("cells,traffic")
    assert app.traffic is not None
    assert app.traffic.transport.metrics.consumed is app.metrics.events_consumed
    both = _app("behavior,cells,traffic")
    assert both.traffic is not None and both.hot_path is not None
    assert both.traffic.transport.metrics is both.hot_path.transport.metrics


def _get(app: StreamApp, path: str, **match: str) -> tuple[int, dict[str, Any]]:
    view = app.faust.web.views[path]
    response = asyncio.run(view.get(object(), **match))  # the absent pages read nothing of the request
    return response.status, json.loads(response.body)


def test_the_pages_of_an_absent_stage_say_which_worker_to_ask():
    cells_only = _app("cells")
    status, body = _get(cells_only, "/users/{user_id}", user_id="u1")
    assert status == 404 and body["stage"] == "behavior"
    assert "does not run the behavior stage" in body["error"] and "--stages behavior" in body["error"]
    for path, match in [("/sensors/{sensor_id}/forecast", {"sensor_id": "s1"}),
                        ("/networks/{network}/sensors/{sensor_id}/forecast", {"network": "n", "sensor_id": "s1"})]:
        status, body = _get(cells_only, path, **match)
        assert status == 404 and "--stages traffic" in body["error"], body


def test_the_pages_of_a_present_stage_answer_from_its_state():
    traffic = _app("traffic")
    status, body = _get(traffic, "/sensors/{sensor_id}/forecast", sensor_id="s1")
    assert status == 404 and body["error"] == "no forecast for sensor 's1' on this worker", "the stage's own answer"
