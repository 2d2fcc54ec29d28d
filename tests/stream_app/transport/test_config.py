"""Transport settings refuse what cannot work, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_app.exceptions import ConfigError
from stream_app.transport.config import TransportConfig


def _config(**overrides) -> TransportConfig:
    base = dict(name="behavior", app_id="stream-app", input_topic="user-events", dead_letter_topic="dead-letters",
                state_dir=Path("/tmp/state"))
    return TransportConfig(**{**base, **overrides})


def test_defaults_name_the_group_store_and_changelog() -> None:
    config = _config()
    assert config.group == "stream-app-behavior"
    assert config.store_names == ("behavior",)
    assert config.changelog_topic("behavior") == "stream-app-behavior-changelog"
    assert config.store_dir == Path("/tmp/state/stream-app-behavior")


@pytest.mark.parametrize("overrides, message", [
    ({"guarantee": "at_most_once"}, "guarantee"),
    ({"stores": ("a", "a")}, "distinct"),
    ({"stores": ("bad/name",)}, "letters"),
    ({"commit_interval_s": 0}, "commit_interval_s"),
])
def test_invalid_settings_are_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)
