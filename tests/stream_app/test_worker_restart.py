"""A worker stopped by a broker failure is told apart from one stopped by anything else."""

from __future__ import annotations

import sys

import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, TopicAuthorizationFailedError

from stream_app.worker import broker_failure


def _exit_raised_while_handling(error: BaseException) -> SystemExit:
    """What Faust's worker raises: ``sys.exit(1)`` inside the handler of the error that stopped it."""
    try:
        try:
            raise error
        except Exception:
            sys.exit(1)
    except SystemExit as exit:
        return exit
    raise AssertionError("unreachable")


@pytest.mark.parametrize("error", [KafkaConnectionError("closed"), NodeNotReadyError("node 1")])
def test_a_broker_that_went_away_is_found_behind_the_exit(error):
    assert broker_failure(_exit_raised_while_handling(error)) is error


def test_a_broker_failure_wrapped_in_another_error_is_found():
    try:
        try:
            raise KafkaConnectionError("closed")
        except KafkaConnectionError as cause:
            raise RuntimeError("start failed") from cause
    except RuntimeError as wrapped:
        assert isinstance(broker_failure(_exit_raised_while_handling(wrapped)), KafkaConnectionError)


@pytest.mark.parametrize("error", [ValueError("a pipeline bug"), TopicAuthorizationFailedError()])
def test_other_failures_are_not_broker_failures(error):
    assert broker_failure(_exit_raised_while_handling(error)) is None
    assert broker_failure(None) is None
