"""Settings come from STREAM_APP_* variables, once, typed; bad values name the variable."""

from __future__ import annotations

import dataclasses

import pytest

from stream_app.exceptions import ConfigError
from stream_app.networks import parse_network_spec
from stream_app.settings import Settings, setting_docs


def test_environment_is_parsed_into_typed_fields():
    settings = Settings.from_env({"STREAM_APP_WEB_PORT": "7001", "STREAM_APP_HORIZONS": "15,45",
                                  "STREAM_APP_GRACE_S": "2.5", "STREAM_APP_BROKER": "kafka://k:9092"})
    assert (settings.web_port, settings.horizons_min, settings.grace_s, settings.broker) == \
        (7001, (15, 45), 2.5, "kafka://k:9092")


def test_overrides_win_and_none_overrides_are_ignored():
    settings = Settings.from_env({"STREAM_APP_WEB_PORT": "7001"}, web_port=7002, checkpoint=None)
    assert settings.web_port == 7002 and settings.checkpoint is None


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().web_port = 1  # type: ignore[misc]


def test_bad_value_names_the_variable():
    with pytest.raises(ConfigError, match="STREAM_APP_WEB_PORT"):
        Settings.from_env({"STREAM_APP_WEB_PORT": "lots"})


def test_as_env_round_trips():
    settings = Settings(web_port=7003, horizons_min=(5, 10), checkpoint="/m.pt", topic_prefix="x-")
    assert Settings.from_env(settings.as_env()) == settings


def test_every_setting_has_a_distinct_documented_variable():
    docs = setting_docs()
    assert len({env for env, _, _ in docs}) == len(docs) == len(dataclasses.fields(Settings))
    assert all(env.startswith("STREAM_APP_") and doc for env, _, doc in docs)


def test_topic_prefix_applies_to_topic_names():
    assert Settings(topic_prefix="prod-").topic("user-events") == "prod-user-events"


def test_network_spec_parsing():
    assert parse_network_spec("la=/a.csv:/s.csv, city=/c.csv") == {"la": ("/a.csv", "/s.csv"),
                                                                   "city": ("/c.csv", None)}
    assert parse_network_spec(None) == {}
    with pytest.raises(ConfigError, match="NAME=ADJ.csv"):
        parse_network_spec("nonsense")
