"""Interactive queries: each answered by the worker that owns the key (Faust table routing, or the
transport's partition owners on the transport hot path)."""

from __future__ import annotations

from typing import Any

import aiohttp
import faust
from faust.types import CollectionT
from faust.web import Request, Response, View

from stream_app.pipelines.behavior import BehaviorPipeline
from stream_app.pipelines.traffic import NetworkSnapshots
from stream_app.tables import Tables
from stream_app.transport import Transport

__all__ = ["attach_pages"]

# Set on a request one worker forwards to the owner: the owner answers it, never forwards it again.
FORWARDED_HEADER = "X-Stream-App-Forwarded"


def attach_pages(app: faust.App, tables: Tables, behavior: BehaviorPipeline | None, networks: NetworkSnapshots | None,
                 transport: Transport[Any] | None = None) -> None:
    """Register the query pages on ``app`` (users routed by ``transport`` when it holds them). The
    pages of a stage this worker does not run (``behavior`` or ``networks`` None) answer 404 with
    which workers to ask instead."""
    if behavior is None:
        _absent_stage_page(app, "/users/{user_id}", "behavior")
    else:
        _user_pages(app, tables, behavior, transport)
    if networks is None or tables.network_state is None:
        _absent_stage_page(app, "/networks/{network}/sensors/{sensor_id}/forecast", "traffic")
        _absent_stage_page(app, "/sensors/{sensor_id}/forecast", "traffic")
    else:
        _forecast_pages(app, tables.network_state, networks)


def _absent_stage_page(app: faust.App, path: str, stage: str) -> None:
    message = (f"this worker does not run the {stage} stage (STREAM_APP_STAGES); ask a worker started with "
               f"--stages {stage} (or without --stages)")

    class AbsentStageView(View):
        async def get(self, request: Request, **_: str) -> Response:
            return self.json({"error": message, "stage": stage}, status=404)

    app.page(path)(AbsentStageView)


def _user_pages(app: faust.App, tables: Tables, behavior: BehaviorPipeline, transport: Transport[Any] | None) -> None:
    def user_response(view: View, user_id: str) -> Response:
        summary = behavior.user_summary(user_id)
        if summary is None:
            return view.json({"error": f"user {user_id!r} has no state (never seen, or expired)"}, status=404)
        return view.json(summary)

    if transport is None:
        user_state = tables.user_state
        if user_state is None:
            raise ValueError("the user pages need the user-state table (hot path faust) or the transport that "
                             "holds the users (hot path transport); neither was given")

        class UserView(View):
            """GET /users/{id}: window statistics, event count and the latest prediction of one user."""

            # faust types a table_route handler as (view, request) only, without the match_info argument
            @app.table_route(table=user_state, match_info="user_id")  # type: ignore[arg-type]
            async def get(self, request: Request, user_id: str) -> Response:
                return user_response(self, user_id)
    else:
        owners: Transport[Any] = transport  # bound here: mypy does not narrow ``transport`` inside the class

        class UserView(View):  # type: ignore[no-redef]
            """GET /users/{id}: answered here when this worker owns the user's partition, else by its owner."""

            async def get(self, request: Request, user_id: str) -> Response:
                partition = owners.partition_for(user_id.encode())
                if owners.is_local(partition):
                    return user_response(self, user_id)
                owner = owners.owner_of(partition)
                if owner is None or owner == owners.config.advertised_url or FORWARDED_HEADER in request.headers:
                    return self.json({"error": f"partition {partition} of user {user_id!r} is being assigned or "
                                               "restored; retry shortly"}, status=503)
                return await _forward(self, f"{owner}/users/{user_id}")

    app.page("/users/{user_id}")(UserView)


def _forecast_pages(app: faust.App, network_state: CollectionT, networks: NetworkSnapshots) -> None:
    class NetworkSensorView(View):
        """GET /networks/{network}/sensors/{id}/forecast: the sensor's latest forecast."""

        # faust types a table_route handler as (view, request) only, without the match_info arguments
        @app.table_route(table=network_state, match_info="network")  # type: ignore[arg-type]
        async def get(self, request: Request, network: str, sensor_id: str) -> Response:
            return _forecast_response(self, networks.latest_forecast(sensor_id, network), sensor_id)

    class SensorView(View):
        """GET /sensors/{id}/forecast: the latest forecast, from the networks this worker steps."""

        async def get(self, request: Request, sensor_id: str) -> Response:
            return _forecast_response(self, networks.latest_forecast(sensor_id), sensor_id)

    app.page("/networks/{network}/sensors/{sensor_id}/forecast")(NetworkSensorView)
    app.page("/sensors/{sensor_id}/forecast")(SensorView)


def _forecast_response(view: View, forecast: dict[str, Any] | None, sensor_id: str) -> Response:
    if forecast is None:
        return view.json({"error": f"no forecast for sensor {sensor_id!r} on this worker"}, status=404)
    return view.json(forecast)


async def _forward(view: View, url: str) -> Response:
    """The owner's answer to the same query (its status and JSON body)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url, headers={FORWARDED_HEADER: "1"}) as answer:
                return view.json(await answer.json(content_type=None), status=answer.status)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return view.json({"error": f"the owner at {url} did not answer: {exc!r}"}, status=503)
