"""structlog JSON logs carrying user id and correlation id, with secrets redacted.

Bind request or event context with `bind_context(user_id=..., correlation_id=...)`; every line logged
in that task then carries it. The redaction processor runs last before rendering, so nothing a caller
passes (an aggregator token, a JWT, an Authorization header) reaches the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from shared.kafka_noise import KafkaOutageLog

REDACTED = "[REDACTED]"
SECRET_KEY_PATTERN = re.compile(
    r"(pass(word)?|secret|token|authorization|auth_code|api[_-]?key|jwt|credential|cookie|iban_full)",
    re.IGNORECASE,
)
# JWTs, bearer credentials and Fernet/AES-GCM tokens that slipped into free text
SECRET_VALUE_PATTERNS = (
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"gAAAAA[A-Za-z0-9_=-]{20,}"),
)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        for pattern in SECRET_VALUE_PATTERNS:
            value = pattern.sub(REDACTED, value)
        return value
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY_PATTERN.search(key))


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: blanks secret-named keys and secret-looking values, at any depth."""
    for key in list(event_dict):
        event_dict[key] = REDACTED if _is_secret_key(key) else redact_value(event_dict[key])
    return event_dict


def configure_logging(service: str, level: str = "INFO") -> KafkaOutageLog:
    """JSON lines on stdout; stdlib loggers (uvicorn, aiokafka, faststream) go through the same pipeline.

    aiokafka's connection errors while Kafka is down become one warning per outage (shared.kafka_noise);
    the filter is returned so that a service can give it its way to ask Kafka (`probe`).
    """
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            *shared_processors,
            _add_service(service),
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared_processors, _add_service(service)],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    kafka_outages = KafkaOutageLog(service)
    handler.addFilter(kafka_outages)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return kafka_outages


def _add_service(service: str) -> Any:
    def processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def bind_context(**values: str | None) -> None:
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
