"""Exported JSON Schemas: one per topic, valid JSON, carrying the required fields and the constraints."""

import json

import pytest

from schemas import TOPIC_SCHEMAS, json_schemas, write_schemas
from schemas.export import JSON_SCHEMA_DIALECT

TOPICS = ["user-events", "traffic-readings", "next-action-predictions", "traffic-forecasts", "cell-activity",
          "anomaly-alerts", "dead-letters", "sensor-aggregates"]

REQUIRED = {
    "user-events": {"event_id", "user_id", "ts", "action"},
    "traffic-readings": {"sensor_id", "ts"},
    "next-action-predictions": {"event_id", "user_id", "as_of", "top_k", "model_version", "window_events",
                                "window_span_s", "event_ts", "ingested_at", "processed_at"},
    "traffic-forecasts": {"sensor_id", "network", "window_end", "observed", "imputed", "horizons",
                          "model_version", "processed_at"},
    "cell-activity": {"cell", "resolution", "window_start", "window_end", "events", "users"},
    "anomaly-alerts": {"alert_id", "kind", "key", "ts", "observed", "expected", "score", "severity"},
    "dead-letters": {"source_topic", "partition", "offset", "reason", "detail", "payload", "payload_size",
                     "truncated", "received_at"},
    "sensor-aggregates": {"sensor_id", "network", "window_start", "window_end", "mean_speed", "min_speed",
                          "max_speed", "count"},
}


@pytest.fixture(scope="module")
def schemas():
    return json_schemas()


def branch(schema: dict, field: str, json_type: str) -> dict:
    """The part of a property's schema that describes ``json_type`` (unwrapping ``anyOf``)."""
    prop = schema["properties"][field]
    options = prop.get("anyOf", [prop])
    return next(option for option in options if option.get("type") == json_type)


def test_every_topic_has_a_schema(schemas):
    assert sorted(schemas) == sorted(TOPICS) == sorted(TOPIC_SCHEMAS)


@pytest.mark.parametrize("topic", TOPICS)
def test_schema_is_self_contained_json(schemas, topic):
    schema = json.loads(json.dumps(schemas[topic]))
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert schema["type"] == "object"
    assert schema["title"] == TOPIC_SCHEMAS[topic].__name__
    assert schema["description"] and not schema["description"].startswith(" ")
    for ref in _refs(schema):
        assert ref.removeprefix("#/$defs/") in schema.get("$defs", {}), ref


@pytest.mark.parametrize("topic", TOPICS)
def test_required_fields(schemas, topic):
    assert set(schemas[topic]["required"]) == REQUIRED[topic]


@pytest.mark.parametrize(("topic", "field", "json_type", "constraint", "value"), [
    ("user-events", "lat", "number", "minimum", -90),
    ("user-events", "lat", "number", "maximum", 90),
    ("user-events", "lon", "number", "minimum", -180),
    ("user-events", "event_id", "string", "minLength", 1),
    ("user-events", "event_id", "string", "maxLength", 128),
    ("user-events", "ts", "integer", "minimum", 946_684_800_000),
    ("user-events", "ts", "string", "maxLength", 64),
    ("user-events", "properties", "object", "maxProperties", 32),
    ("traffic-readings", "speed", "number", "maximum", 300),
    ("traffic-readings", "occupancy", "number", "maximum", 1),
    ("traffic-readings", "flow", "number", "minimum", 0),
    ("next-action-predictions", "event_ts", "integer", "minimum", 0),
])
def test_constraints_are_exported(schemas, topic, field, json_type, constraint, value):
    assert branch(schemas[topic], field, json_type)[constraint] == value


def test_nested_and_enum_constraints(schemas):
    alert = schemas["anomaly-alerts"]["properties"]
    assert alert["kind"]["enum"] == ["behavior", "crowd", "forecast_residual", "incident", "profile_drop"]
    assert alert["status"]["anyOf"][0]["enum"] == ["raised", "resolved"]
    assert alert["severity"]["enum"] == ["critical", "warning"]
    score = schemas["next-action-predictions"]["$defs"]["ActionScore"]["properties"]["prob"]
    assert (score["minimum"], score["maximum"]) == (0, 1)
    assert schemas["traffic-readings"]["properties"]["network"]["default"] == "default"


def test_reading_rules_across_fields(schemas):
    reading = schemas["traffic-readings"]
    assert reading["anyOf"] == [{"required": ["speed"]}, {"required": ["value"]}]
    count_rule = next(rule for rule in reading["allOf"] if rule["if"]["properties"]["kind"].get("const") == "count")
    assert count_rule["then"]["properties"]["value"] == {"type": "integer", "minimum": 0}
    assert reading["properties"]["kind"]["enum"] == ["count", "flow", "occupancy", "speed"]
    forecast = schemas["traffic-forecasts"]
    assert forecast["properties"]["kind"]["default"] == "speed"
    assert set(forecast["$defs"]["HorizonForecast"]["properties"]) == {"minutes", "speed", "value", "source"}


def test_write_schemas(tmp_path, schemas):
    paths = write_schemas(tmp_path / "out")
    assert sorted(path.name for path in paths) == sorted(f"{topic}.schema.json" for topic in TOPICS)
    for path in paths:
        assert json.loads(path.read_text(encoding="utf-8")) == schemas[path.name.removesuffix(".schema.json")]


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
