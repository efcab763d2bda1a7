"""Configuration from the contract's environment variables, one definition for every service."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import DEFAULT_MAX_TOKEN_LIFETIME_S, TokenPolicy

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789"
# 32 url-safe base64 bytes; development only, `make up` uses it when BANKSYNC_TOKEN_KEY is unset.
DEV_TOKEN_KEY = "ZGV2LW9ubHktdG9rZW4ta2V5LWNoYW5nZS1tZS0zMmI="
MIN_SECRET_BYTES = 32


class ServiceSettings(BaseSettings):
    """Settings shared by the four services. Names are the contract's environment variables."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = "localhost:9092"
    mongodb_url: str = "mongodb://localhost:27017"
    mongodb_database: str = "banksync"
    # the users' data keys (shared.vault), in a database every service reaches
    banksync_vault_database: str = "banksync_vault"
    # the consumer group of erasure requests (shared.erasure); empty: `<service>-erasures`
    erasures_group_id: str = ""
    aggregator_base_url: str = "http://localhost:8010"
    # `local` (the default: `make up`, tests) starts on development secrets with a warning; any other
    # environment refuses to start on a default or short secret (`weak_secrets`)
    banksync_env: Literal["local", "staging", "production"] = "local"
    banksync_jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    # when set, every token must carry this `iss` / `aud`; tokens live at most this long
    banksync_jwt_issuer: str = ""
    banksync_jwt_audience: str = ""
    banksync_jwt_max_lifetime_s: int = Field(default=DEFAULT_MAX_TOKEN_LIFETIME_S, gt=0)
    banksync_token_key: SecretStr = SecretStr(DEV_TOKEN_KEY)
    entitlements_url: str = "http://localhost:8001"
    connector_url: str = "http://localhost:8002"
    importer_url: str = "http://localhost:8003"
    categorizer_url: str = "http://localhost:8004"
    kafka_topic_partitions: int = Field(default=6, ge=1)
    log_level: str = "INFO"
    # which process of the service this is (deploy/local/stack.sh and the harness set it): it names the
    # process's Kafka clients (`banksync-<service>-<k>`), so that Kafka's group listings tell replicas apart
    service_replica: int = Field(default=1, ge=1)
    # how long /readyz waits for each engine before it answers 503
    readiness_timeout_s: float = 2.0
    # how often /metrics' consumer lag is read from the broker
    consumer_lag_interval_s: float = Field(default=10.0, gt=0)
    # the largest request body a service reads (shared.limits); a larger one is 413 `payload_too_large`
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # the same for the aggregator's webhooks, whose bodies carry the lines a sync changed
    max_webhook_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # per-caller token buckets on the `/v1/` routes (shared.ratelimit), each replica its own: a user's
    # token (by its verified subject), and a caller without a valid token (by its address)...
    rate_limit_per_s: float = Field(default=200.0, gt=0)
    rate_limit_burst: int = Field(default=2000, ge=1)
    # ...and Budgetfacile's own callers: tokens with the `ops` or `billing` scope, the aggregator's
    # webhooks (by their source address)
    rate_limit_service_per_s: float = Field(default=2000.0, gt=0)
    rate_limit_service_burst: int = Field(default=20000, ge=1)
    # the buckets a replica keeps (the least recently used goes first; a full bucket is dropped anyway)
    rate_limit_max_buckets: int = Field(default=10_000, ge=1)
    # a request not answered within this is stopped: 503 `request_timeout` (shared.limits); above the
    # connector's aggregator calls (60 s of retries plus one 20 s call) and the slowest export
    request_timeout_s: float = Field(default=90.0, gt=0)
    # uvicorn (shared.serve): an idle connection is closed after this (longer than the 60 s idle timeout of
    # usual load balancers and httpx's 5 s, so that the server is never the side that closes a connection
    # a client is about to reuse); at most this many connections and requests at once, past it a 503 (0:
    # no limit); the listening socket's queue of connections not yet accepted
    http_keep_alive_s: int = Field(default=75, ge=1)
    http_limit_concurrency: int = Field(default=1000, ge=0)
    http_backlog: int = Field(default=2048, ge=1)

    def token_policy(self) -> TokenPolicy:
        return TokenPolicy(
            self.banksync_jwt_secret.get_secret_value(),
            max_lifetime_s=self.banksync_jwt_max_lifetime_s,
            issuer=self.banksync_jwt_issuer or None,
            audience=self.banksync_jwt_audience or None,
        )

    def secrets(self) -> dict[str, tuple[SecretStr, str]]:
        """Each secret setting (by its environment variable) with its development default; a service
        whose settings hold more secrets extends this."""
        return {
            "BANKSYNC_JWT_SECRET": (self.banksync_jwt_secret, DEV_JWT_SECRET),
            "BANKSYNC_TOKEN_KEY": (self.banksync_token_key, DEV_TOKEN_KEY),
        }

    def weak_secrets(self, names: Collection[str] | None = None) -> list[str]:
        """What is wrong with the secrets (those named, or all): a development default, or fewer than 32
        bytes."""
        found = []
        for name, (value, default) in self.secrets().items():
            if names is not None and name not in names:
                continue
            secret = value.get_secret_value()
            if secret == default:
                found.append(f"{name} is the development default")
            elif len(secret.encode()) < MIN_SECRET_BYTES:
                found.append(f"{name} is shorter than {MIN_SECRET_BYTES} bytes")
        return found
