"""Interactive queries: each answered by the worker that owns the key (Faust table routing)."""

from __future__ import annotations

from faust.web import Request, Response, View

from stream_app.agents import behavior, traffic
from stream_app.app import app

__all__ = ["UserView", "NetworkSensorView", "SensorView"]


@app.page("/users/{user_id}")
class UserView(View):
    """GET /users/{id}: window statistics, event count and the latest prediction of one user."""

    @app.table_route(table=behavior.user_table, match_info="user_id")
    async def get(self, request: Request, user_id: str) -> Response:
        summary = behavior.user_summary(user_id)
        if summary is None:
            return self.json({"error": f"user {user_id!r} has no state (never seen, or expired)"}, status=404)
        return self.json(summary)


@app.page("/networks/{network}/sensors/{sensor_id}/forecast")
class NetworkSensorView(View):
    """GET /networks/{network}/sensors/{id}/forecast: the sensor's latest forecast."""

    @app.table_route(table=traffic.network_table, match_info="network")
    async def get(self, request: Request, network: str, sensor_id: str) -> Response:
        return _forecast_response(self, sensor_id, network)


@app.page("/sensors/{sensor_id}/forecast")
class SensorView(View):
    """GET /sensors/{id}/forecast: the latest forecast, from the networks this worker steps."""

    async def get(self, request: Request, sensor_id: str) -> Response:
        return _forecast_response(self, sensor_id, None)


def _forecast_response(view: View, sensor_id: str, network: str | None) -> Response:
    forecast = traffic.latest_forecast(sensor_id, network)
    if forecast is None:
        return view.json({"error": f"no forecast for sensor {sensor_id!r} on this worker"}, status=404)
    return view.json(forecast)
