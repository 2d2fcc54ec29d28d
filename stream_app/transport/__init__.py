"""Batch-native transport of the hot path: consume, decode, process, produce and checkpoint per batch.

``Transport`` runs one pipeline over one input topic with per-partition state stores backed by
compacted changelogs, ``at_least_once`` or ``exactly_once``; see ``transport.py`` for the design.
"""

from stream_app.transport.assignor import OwnerAssignor
from stream_app.transport.batch import (
    Batch,
    BatchDecoder,
    Outputs,
    PartitionListener,
    Processor,
    Punctuator,
    State,
    per_record,
)
from stream_app.transport.config import GUARANTEES, Guarantee, TransportConfig
from stream_app.transport.dead_letters import KEY_MISMATCH, PAYLOAD_HEADER, Rejected
from stream_app.transport.exceptions import NotLocalError, SnapshotError, TransportError
from stream_app.transport.metrics import TransportMetrics
from stream_app.transport.noise import OutageLogFilter, install_outage_filter
from stream_app.transport.store import PartitionStore, RoutedStore
from stream_app.transport.transport import Transport

__all__ = [
    "Transport", "TransportConfig", "Guarantee", "GUARANTEES", "TransportMetrics",
    "Batch", "BatchDecoder", "Outputs", "Processor", "Punctuator", "PartitionListener", "State", "per_record",
    "PartitionStore", "RoutedStore", "OwnerAssignor", "Rejected", "KEY_MISMATCH", "PAYLOAD_HEADER",
    "OutageLogFilter", "install_outage_filter", "TransportError", "SnapshotError", "NotLocalError",
]
