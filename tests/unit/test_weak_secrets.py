"""Outside the local stack a service refuses to start on a development default or a short secret; on the
local stack it starts with one warning (issue #17, point 3)."""

from __future__ import annotations

import base64
import secrets

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shared.service import CORRELATION_HEADER, WeakSecrets, create_service_app, refuse_weak_secrets
from shared.settings import DEV_JWT_SECRET, DEV_TOKEN_KEY, ServiceSettings

STRONG_JWT = secrets.token_urlsafe(48)
STRONG_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def settings(**values: str) -> ServiceSettings:
    return ServiceSettings.model_validate(values)


def test_the_defaults_are_weak_and_named():
    weak = settings().weak_secrets()
    assert weak == [
        "BANKSYNC_JWT_SECRET is the development default",
        "BANKSYNC_TOKEN_KEY is the development default",
    ]


@pytest.mark.parametrize("env", ["production", "staging"])
def test_production_refuses_the_development_defaults(env):
    with pytest.raises(WeakSecrets, match="BANKSYNC_JWT_SECRET is the development default"):
        refuse_weak_secrets("importer", settings(banksync_env=env))


def test_production_refuses_a_short_jwt_secret():
    found = settings(
        banksync_env="production", banksync_jwt_secret="eleven-byte", banksync_token_key=STRONG_KEY
    )
    with pytest.raises(WeakSecrets, match="BANKSYNC_JWT_SECRET is shorter than 32 bytes"):
        refuse_weak_secrets("importer", found)


def test_production_starts_with_real_secrets():
    found = settings(banksync_env="production", banksync_jwt_secret=STRONG_JWT, banksync_token_key=STRONG_KEY)
    assert found.weak_secrets() == []
    refuse_weak_secrets("importer", found)


def test_the_service_app_is_not_built_on_weak_secrets_in_production():
    with pytest.raises(WeakSecrets):
        create_service_app("importer", settings(banksync_env="production", banksync_token_key=STRONG_KEY))


def test_local_stack_warns_once(capsys):
    refuse_weak_secrets(
        "importer", settings(banksync_jwt_secret=DEV_JWT_SECRET, banksync_token_key=DEV_TOKEN_KEY)
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "development_secrets" in line]
    assert len(lines) == 1


def test_an_unknown_environment_is_a_settings_error():
    with pytest.raises(ValidationError, match="banksync_env"):
        settings(banksync_env="prod")


# ---- X-Correlation-ID: kept when it looks like one, replaced otherwise ---------------------------------
@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_service_app("probe", settings()))


def test_a_well_formed_correlation_id_is_kept(client):
    given = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert client.get("/healthz", headers={CORRELATION_HEADER: given}).headers[CORRELATION_HEADER] == given


@pytest.mark.parametrize(
    "given",
    ["x" * 6000, "abc\tdef", 'say "hi"', "a b", "<script>", "é".encode()],
    ids=["6000", "tab", "quotes", "space", "html", "accent"],
)
def test_a_hostile_correlation_id_is_replaced(client, given):
    answered = client.get("/healthz", headers={CORRELATION_HEADER: given}).headers[CORRELATION_HEADER]
    assert answered != (given.decode("latin-1") if isinstance(given, bytes) else given)
    assert len(answered) == 36  # a new UUID


def test_the_connector_also_checks_its_aggregator_secrets():
    from services.connector.app import ConnectorSettings

    found = ConnectorSettings.model_validate(
        {"banksync_env": "production", "banksync_jwt_secret": STRONG_JWT, "banksync_token_key": STRONG_KEY}
    )
    assert found.weak_secrets() == [
        "AGGREGATOR_CLIENT_SECRET is the development default",
        "AGGREGATOR_WEBHOOK_SECRET is the development default",
    ]
    with pytest.raises(WeakSecrets, match="AGGREGATOR_WEBHOOK_SECRET"):
        refuse_weak_secrets("connector", found)
    strong = ConnectorSettings.model_validate(
        {
            "banksync_env": "production",
            "banksync_jwt_secret": STRONG_JWT,
            "banksync_token_key": STRONG_KEY,
            "aggregator_client_secret": secrets.token_urlsafe(32),
            "aggregator_webhook_secret": secrets.token_urlsafe(32),
        }
    )
    refuse_weak_secrets("connector", strong)
