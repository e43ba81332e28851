"""How a process's Kafka clients authenticate, in each client library's own spelling, from the
settings' `kafka_security_protocol`, `kafka_sasl_mechanism`, `kafka_username`, `kafka_password` and
`kafka_ssl_cafile` (infra/config/settings.py). Every client of the code base takes these: aiokafka
(the API's portfolio bus and market feed, the topic reader; the worker's Faust app, through its
SASL credentials built from the same settings in streams/app.py) and
librdkafka (feeds, `topics create`). PLAINTEXT, the embedded default, adds nothing."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.config.settings import Settings


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile is not None else None
    return ssl.create_default_context(cafile=cafile)


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `AIOKafkaProducer`/`AIOKafkaConsumer`/`AIOKafkaAdminClient`."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {
        "security_protocol": settings.kafka_security_protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_username,
        "sasl_plain_password": settings.kafka_password.get_secret_value(),
    }
    if settings.kafka_security_protocol == "SASL_SSL":
        options["ssl_context"] = _ssl_context(settings)
    return options


def librdkafka_options(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration properties (confluent-kafka's Producer, AdminClient, Consumer)."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {
        "security.protocol": settings.kafka_security_protocol,
        "sasl.mechanisms": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_username,
        "sasl.password": settings.kafka_password.get_secret_value(),
    }
    if settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_ssl_cafile is not None:
        options["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The context SASL_SSL clients check the broker with; None for the other protocols."""
    return _ssl_context(settings) if settings.kafka_security_protocol == "SASL_SSL" else None
