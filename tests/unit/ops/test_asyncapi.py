"""The AsyncAPI document: generated from the code, covering every contract topic and event, committed."""

import json

from typer.testing import CliRunner

from ops.asyncapi import DOCUMENT_PATH, document, document_text, receive_operation
from ops.cli import app
from shared.contract.catalog import CATALOG, event_names
from shared.contract.envelope import event_type
from shared.contract.topics import TOPICS


def test_the_committed_document_is_current():
    result = CliRunner().invoke(app, ["asyncapi", "--check"])
    assert result.exit_code == 0, (
        f"{result.output}\nrun `.venv/bin/banksync asyncapi` and commit docs/asyncapi.json"
    )


def test_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "asyncapi.json"
    stale.write_text("{}\n")
    result = CliRunner().invoke(app, ["asyncapi", "--check", "--output", str(stale)])
    assert result.exit_code == 1
    assert "is not current" in result.output
    written = CliRunner().invoke(app, ["asyncapi", "--output", str(stale)])
    assert written.exit_code == 0
    assert stale.read_text() == DOCUMENT_PATH.read_text()


def test_generation_is_deterministic():
    assert document_text() == document_text()


def test_every_contract_topic_has_a_channel_and_every_event_a_schema():
    doc = document()
    assert doc["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == {spec.name for spec in TOPICS}
    schemas = doc["components"]["schemas"]
    types = {
        schema["properties"]["type"].get("const")
        for schema in schemas.values()
        if isinstance(schema.get("properties", {}).get("type"), dict)
    }
    for name in event_names():
        assert event_type(name) in types, name
    sync_failed = schemas["SyncFailedEvent"]
    assert sync_failed["properties"]["data"] == {"$ref": "#/components/schemas/SyncFailed"}
    assert {"code", "message", "retryable"} <= set(schemas["SyncFailed"]["required"])


def test_each_topic_is_sent_by_its_producer_and_received_by_its_consumers():
    operations = document()["operations"]
    for topic in CATALOG:
        assert operations[f"{topic.name}:{topic.producer}:send"]["action"] == "send"
        for consumer in topic.consumers:
            assert operations[receive_operation(topic, consumer)]["action"] == "receive"


def test_the_file_is_json():
    assert json.loads(DOCUMENT_PATH.read_text())["info"]["title"] == "Budgetfacile banksync events"
