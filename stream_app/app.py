"""The Faust app, alone in its module: agents, tables, pages and the CLI import it from here."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from stream_app.metrics import METRICS
from stream_app.settings import Settings

__all__ = ["settings", "app", "create_app", "broker_credentials"]


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for SASL and/or TLS, or None for plaintext."""
    protocol = settings.security_protocol.upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    if protocol.startswith("SASL"):
        mechanism = settings.sasl_mechanism.upper()
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     mechanism=mechanism, ssl_context=context)
    return faust.SSLCredentials(context) if context is not None else None


def _canonical_url(settings: Settings) -> str:
    """Where other workers reach this one's query API (table routing)."""
    host = socket.gethostname() if settings.web_host in ("0.0.0.0", "::") else settings.web_host
    return f"http://{host}:{settings.web_port}"


def create_app(settings: Settings, registry: CollectorRegistry = METRICS.registry) -> faust.App:
    """A Faust app configured from ``settings`` (no broker is contacted here); Faust's own
    Prometheus series go to ``registry`` beside the app's."""
    extra: dict[str, Any] = {}
    if settings.producer_max_batch is not None:
        extra["producer_max_batch_size"] = settings.producer_max_batch
    app = faust.App(
        settings.app_id,
        broker=settings.broker or "kafka://127.0.0.1:9092",
        broker_credentials=broker_credentials(settings),
        store="memory://",  # tables are rebuilt from their changelog topics on start
        datadir=settings.state_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        table_standby_replicas=0,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_transport=f"tcp://{settings.web_host}:{settings.web_port}",
        canonical_url=_canonical_url(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        producer_linger_ms=settings.producer_linger_ms,  # batching cuts broker and worker CPU
        consumer_auto_offset_reset="earliest",
        **extra,
    )
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    return app


settings = Settings.from_env()
app = create_app(settings)
