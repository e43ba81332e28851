"""Kafka client authentication (issue 18, finding 7 at the broker: docker-compose runs SASL/SCRAM
with ACLs on every listener a client reaches). One set of settings says how a process
authenticates; every client library of the code base gets it in its own spelling, and every
client constructs with it (nothing here reaches a broker)."""

from __future__ import annotations

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError

from infra.config.kafka import aiokafka_options, librdkafka_options
from infra.config.settings import Settings
from streams.app import faust_settings

SASL = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_username": "entasis-worker",
        "kafka_password": "p" * 24}


def test_plaintext_adds_nothing() -> None:
    plain = Settings()
    assert aiokafka_options(plain) == {} and librdkafka_options(plain) == {}
    assert "broker_credentials" not in faust_settings(plain)


def test_sasl_needs_a_user_and_a_password() -> None:
    with pytest.raises(ValidationError, match="ENTASIS_KAFKA_USERNAME"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValidationError):
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_username="u")


async def test_every_client_takes_the_scram_settings() -> None:
    settings = Settings(**SASL)  # type: ignore[arg-type]
    options = aiokafka_options(settings)
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "entasis-worker", "sasl_plain_password": "p" * 24}
    AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)  # aiokafka validates the combination
    AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id=None, **options)
    rd = librdkafka_options(settings)
    assert rd["security.protocol"] == "SASL_PLAINTEXT" and rd["sasl.mechanisms"] == "SCRAM-SHA-512"
    Producer({"bootstrap.servers": "127.0.0.1:1", **rd})  # librdkafka refuses unknown or unsupported properties
    AdminClient({"bootstrap.servers": "127.0.0.1:1", **rd})
    conf = faust_settings(settings)
    credentials = conf["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.mechanism.value) == ("entasis-worker", "SCRAM-SHA-512")
    faust.App("t-kafka-sasl", **conf)
    # the password is a secret: never in a repr, handed to children through the environment only
    assert "p" * 24 not in repr(settings)
    assert settings.to_env()["ENTASIS_KAFKA_PASSWORD"] == "p" * 24


async def test_sasl_ssl_checks_the_broker_certificate() -> None:
    settings = Settings(**{**SASL, "kafka_security_protocol": "SASL_SSL"})  # type: ignore[arg-type]
    options = aiokafka_options(settings)
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)
