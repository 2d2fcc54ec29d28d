"""Interactive queries: each answered by the worker that owns the key (Faust table routing)."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View

from stream_app.pipelines.behavior import BehaviorPipeline
from stream_app.pipelines.traffic import NetworkSnapshots
from stream_app.tables import Tables

__all__ = ["attach_pages"]


def attach_pages(app: faust.App, tables: Tables, behavior: BehaviorPipeline, networks: NetworkSnapshots) -> None:
    """Register the query pages on ``app``."""

    class UserView(View):
        """GET /users/{id}: window statistics, event count and the latest prediction of one user."""

        @app.table_route(table=tables.user_state, match_info="user_id")
        async def get(self, request: Request, user_id: str) -> Response:
            summary = behavior.user_summary(user_id)
            if summary is None:
                return self.json({"error": f"user {user_id!r} has no state (never seen, or expired)"}, status=404)
            return self.json(summary)

    class NetworkSensorView(View):
        """GET /networks/{network}/sensors/{id}/forecast: the sensor's latest forecast."""

        @app.table_route(table=tables.network_state, match_info="network")
        async def get(self, request: Request, network: str, sensor_id: str) -> Response:
            return _forecast_response(self, networks.latest_forecast(sensor_id, network), sensor_id)

    class SensorView(View):
        """GET /sensors/{id}/forecast: the latest forecast, from the networks this worker steps."""

        async def get(self, request: Request, sensor_id: str) -> Response:
            return _forecast_response(self, networks.latest_forecast(sensor_id), sensor_id)

    app.page("/users/{user_id}")(UserView)
    app.page("/networks/{network}/sensors/{sensor_id}/forecast")(NetworkSensorView)
    app.page("/sensors/{sensor_id}/forecast")(SensorView)


def _forecast_response(view: View, forecast: dict[str, Any] | None, sensor_id: str) -> Response:
    if forecast is None:
        return view.json({"error": f"no forecast for sensor {sensor_id!r} on this worker"}, status=404)
    return view.json(forecast)
