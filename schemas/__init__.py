"""Wire records of every topic: msgspec structs, their validation and their JSON Schemas."""

from schemas.events import TrafficReading, UserEvent
from schemas.exceptions import FieldError, SchemaError
from schemas.export import TOPIC_SCHEMAS, json_schemas, write_schemas
from schemas.outputs import (
    ActionScore,
    AnomalyAlert,
    CellActivity,
    DeadLetter,
    HorizonForecast,
    NextActionPrediction,
    SensorAggregate,
    TrafficForecast,
)
from schemas.timestamps import MAX_FUTURE_MS, MIN_TIMESTAMP_MS, to_epoch_ms
from schemas.validation import (
    REJECTION_REASONS,
    Rejection,
    decode,
    decode_traffic_reading,
    decode_user_event,
    encode,
    to_dict,
)

__all__ = [
    "UserEvent", "TrafficReading",
    "ActionScore", "NextActionPrediction", "HorizonForecast", "TrafficForecast", "SensorAggregate",
    "CellActivity", "AnomalyAlert", "DeadLetter",
    "REJECTION_REASONS", "Rejection", "decode", "decode_user_event", "decode_traffic_reading",
    "encode", "to_dict",
    "TOPIC_SCHEMAS", "json_schemas", "write_schemas",
    "MIN_TIMESTAMP_MS", "MAX_FUTURE_MS", "to_epoch_ms",
    "SchemaError", "FieldError",
]
