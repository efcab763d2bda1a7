"""The typer layer: bad arguments exit 2 with a message, unreachable services exit 1, nothing hangs."""

import httpx
import pytest
from typer.testing import CliRunner

from harness.devstack import free_port
from ops import services
from ops.cli import app, check_bootstrap
from ops.errors import BadArgument

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["topics", "--bootstrap", "nope"], "is not host:port"),
        (["lag", "-b", "127.0.0.1:99999"], "is not host:port"),
        (["lag", "-b", ","], "--bootstrap is empty"),
        (["dlq", "show", "abc"], "PARTITION:OFFSET"),
        (["dlq", "redrive", "1:2", "1:x"], "PARTITION:OFFSET"),
        (["dlq", "redrive", "1:2", "1:2"], "named twice"),
        (["dlq", "redrive", "1:2", "1:3", "--value-file", "pyproject.toml"], "exactly one id"),
        (["dlq", "redrive", "1:2", "--value-file", "does-not-exist.json"], "does-not-exist.json"),
        (["dlq", "redrive", "1:2", "--value-file", "pyproject.toml"], "is not JSON"),
        (["status", "--user", "bad user"], "is not a valid id"),
        (["status", "--user", "u1", "--url", "ftp://x"], "is not an http(s) URL"),
        (["replay", "--user", "u1", "--account", "a/b"], "is not a valid id"),
        (["replay", "--user", "u1", "--account", "71", "--since", "yesterday"], "YYYY-MM-DD"),
        (["replay", "--user", "u1", "--account", "71", "--since", "2999-01-01"], "in the future"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["replay", "--user", "u1"],
        ["dlq", "redrive"],
        ["dlq", "show"],
        ["lag", "--nope"],
        ["nothing-like-this"],
    ],
)
def test_missing_or_unknown_arguments_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Usage" in result.output or "No such command" in result.output


def test_bad_environment_is_a_bad_argument():
    result = invoke("topics", env={"KAFKA_TOPIC_PARTITIONS": "many"})
    assert result.exit_code == 2
    assert "bad environment settings" in result.output


def test_unreachable_kafka_exits_1_and_says_where():
    port = free_port()
    result = invoke("lag", "--bootstrap", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in result.output


def test_unreachable_connector_exits_1():
    port = free_port()
    result = invoke("status", "--user", "u1", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"cannot reach the connector at http://127.0.0.1:{port}" in result.output


def test_unreachable_importer_exits_1():
    port = free_port()
    result = invoke("replay", "-u", "u1", "-a", "71", env={"IMPORTER_URL": f"http://127.0.0.1:{port}"})
    assert result.exit_code == 1
    assert "cannot reach the importer" in result.output


def test_bootstrap_lists_are_normalised():
    assert check_bootstrap(" a:1 , b.example:9092 ,") == "a:1,b.example:9092"
    assert check_bootstrap("[::1]:9092") == "[::1]:9092"
    with pytest.raises(BadArgument):
        check_bootstrap("host")


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("topics", "lag", "dlq", "status", "replay", "asyncapi"):
        assert command in result.output


def test_a_replay_is_followed_until_it_ends_and_a_failure_exits_1(monkeypatch):
    answers = iter([{"status": "running"}, {"status": "failed", "error": "LookupError: no partitions"}])

    def importer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = {"replay_id": "r9", "status": "running"}
            return httpx.Response(202, json=body, headers={"Location": "/v1/ops/replays/r9"})
        assert request.url.path == "/v1/ops/replays/r9"
        return httpx.Response(200, json=next(answers))

    def fake_client(self: services.ServiceClient) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, transport=httpx.MockTransport(importer))

    monkeypatch.setattr(services.ServiceClient, "client", fake_client)
    monkeypatch.setattr(services.asyncio, "sleep", _no_sleep)
    result = invoke("replay", "-u", "u1", "-a", "71", "--url", "http://127.0.0.1:1")
    assert result.exit_code == 1
    assert "the replay ended failed: LookupError: no partitions" in result.output


async def _no_sleep(_: float) -> None:
    return None
