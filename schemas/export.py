"""JSON Schema of every topic's value, for producers, consumers and a schema registry."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.events import TRAFFIC_READING_RULES, TrafficReading, UserEvent
from schemas.outputs import (
    AnomalyAlert,
    CellActivity,
    DeadLetter,
    NextActionPrediction,
    SensorAggregate,
    TrafficForecast,
)

__all__ = ["TOPIC_SCHEMAS", "JSON_SCHEMA_DIALECT", "json_schema", "json_schemas", "write_schemas"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Default topic name -> the record type of its values.
TOPIC_SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "user-events": UserEvent,
    "traffic-readings": TrafficReading,
    "next-action-predictions": NextActionPrediction,
    "traffic-forecasts": TrafficForecast,
    "cell-activity": CellActivity,
    "anomaly-alerts": AnomalyAlert,
    "dead-letters": DeadLetter,
    "sensor-aggregates": SensorAggregate,
}


#: Record type -> rules across fields that msgspec cannot derive from the field types.
EXTRA_RULES: dict[type[msgspec.Struct], dict[str, Any]] = {TrafficReading: TRAFFIC_READING_RULES}


def json_schema(topic: str, cls: type[msgspec.Struct]) -> dict[str, Any]:
    """A self-contained JSON Schema for the values of ``topic``, with the record's own fields at the top."""
    generated = msgspec.json.schema(cls)
    definitions = generated["$defs"]
    for definition in definitions.values():
        if "description" in definition:
            definition["description"] = inspect.cleandoc(definition["description"])
    root = definitions.pop(cls.__name__)
    schema = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{topic}.schema.json", **root, **EXTRA_RULES.get(cls, {})}
    if definitions:
        schema["$defs"] = definitions
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """Topic -> JSON Schema, for every topic in ``TOPIC_SCHEMAS``."""
    return {topic: json_schema(topic, cls) for topic, cls in TOPIC_SCHEMAS.items()}


def write_schemas(directory: str | Path) -> list[Path]:
    """Write ``<topic>.schema.json`` for every topic into ``directory``; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, schema in json_schemas().items():
        path = directory / f"{topic}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
