import json
import logging

import pytest
import structlog

from shared.auth import issue_token
from shared.logging import REDACTED, bind_context, clear_context, configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging binds the current stdout (here pytest's capture); later tests must not log there."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers


def test_json_lines_carry_context_and_hide_secrets(capsys):
    configure_logging("unit", "INFO")
    structlog.reset_defaults()
    configure_logging("unit", "INFO")
    jwt_token = issue_token("s" * 32, "alice")
    clear_context()
    bind_context(user_id="alice", correlation_id="run-42")
    get_logger("t").info(
        "aggregator_call",
        auth_token="perm-token-123",
        headers={"Authorization": f"Bearer {jwt_token}"},
        detail=f"failed with token {jwt_token}",
        nested=[{"password": "hunter2"}],
        amount="-12.00",
    )
    clear_context()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["service"] == "unit"
    assert record["user_id"] == "alice"
    assert record["correlation_id"] == "run-42"
    assert record["amount"] == "-12.00"
    assert record["auth_token"] == REDACTED
    assert record["headers"]["Authorization"] == REDACTED
    assert record["nested"][0]["password"] == REDACTED
    for secret in ("perm-token-123", jwt_token, "hunter2"):
        assert secret not in line
