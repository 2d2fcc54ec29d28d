"""Kafka security settings reach the Faust app and the plain clients."""

from __future__ import annotations

import ssl

import faust
from prometheus_client import CollectorRegistry

from stream_app.app import broker_credentials, create_app
from stream_app.kafka_io import client_options
from stream_app.settings import Settings


def test_plaintext_has_no_credentials():
    assert broker_credentials(Settings()) is None


def test_sasl_scram_over_tls_reaches_the_faust_app():
    settings = Settings(broker="kafka://k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                        sasl_username="svc", sasl_password="secret", app_id="security-test")
    app = create_app(settings, registry=CollectorRegistry())
    credentials = app.faust.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("svc", "secret")
    assert str(credentials.mechanism.value) == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_tls_only_gives_ssl_credentials_and_client_options():
    settings = Settings(broker="kafka://a:9093;b:9093", security_protocol="SSL")
    assert isinstance(broker_credentials(settings), faust.SSLCredentials)
    options = client_options(settings)
    assert options["bootstrap_servers"] == "a:9093,b:9093"
    assert options["security_protocol"] == "SSL" and isinstance(options["ssl_context"], ssl.SSLContext)


def test_sasl_plain_client_options():
    settings = Settings(broker="kafka://a:9092", security_protocol="SASL_PLAINTEXT", sasl_username="u",
                        sasl_password="p")
    options = client_options(settings)
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == \
        ("PLAIN", "u", "p")
