"""Configuration from the contract's environment variables, one definition for every service."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789"
# 32 url-safe base64 bytes; development only, `make up` uses it when BANKSYNC_TOKEN_KEY is unset.
DEV_TOKEN_KEY = "ZGV2LW9ubHktdG9rZW4ta2V5LWNoYW5nZS1tZS0zMmI="


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
    banksync_jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    banksync_token_key: SecretStr = SecretStr(DEV_TOKEN_KEY)
    entitlements_url: str = "http://localhost:8001"
    connector_url: str = "http://localhost:8002"
    importer_url: str = "http://localhost:8003"
    categorizer_url: str = "http://localhost:8004"
    kafka_topic_partitions: int = Field(default=6, ge=1)
    log_level: str = "INFO"
    # how long /readyz waits for each engine before it answers 503
    readiness_timeout_s: float = 2.0
    # how often /metrics' consumer lag is read from the broker
    consumer_lag_interval_s: float = Field(default=10.0, gt=0)
