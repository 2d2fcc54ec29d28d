"""Per-batch logic as plain classes: decoded records and a state store in, output records out.

A pipeline knows nothing of the transport that feeds it: the Faust agents in ``stream_app.agents``
take a batch, call it, send what it returns and flush its state before offsets are committed.
"""

from stream_app.pipelines.base import Received, Record, StateStore

__all__ = ["Received", "Record", "StateStore"]
