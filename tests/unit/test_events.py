import pytest

from shared.contract.envelope import CloudEvent, account_key, deterministic_event_id, event_name, event_type


def test_event_type_round_trip():
    assert event_type("operation.imported") == "fr.budgetfacile.banksync.operation.imported.v1"
    assert event_name(event_type("sync.requested")) == "sync.requested"
    with pytest.raises(ValueError, match="not a banksync"):
        event_name("com.example.other")


def test_cloudevent_has_contract_attributes_and_round_trips():
    event = CloudEvent.new(
        service="connector",
        name="transaction.observed",
        data={"amount": "-42.50"},
        user_id="u1",
        correlation_id="run-1",
        subject="acc-9",
    )
    raw = event.to_json_bytes()
    back = CloudEvent.from_json_bytes(raw)
    assert back == event
    wire = back.model_dump(mode="json")
    for attribute in ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data"):
        assert attribute in wire
    assert wire["specversion"] == "1.0"
    assert wire["source"] == "/banksync/connector"
    assert wire["userid"] == "u1"
    assert wire["correlationid"] == "run-1"
    assert wire["time"].endswith("Z") or "+00:00" in wire["time"]


def test_deterministic_ids_recognise_a_resend():
    assert deterministic_event_id("u1", "acc", "tx1", "v1") == deterministic_event_id(
        "u1", "acc", "tx1", "v1"
    )
    assert deterministic_event_id("u1", "acc", "tx1", "v1") != deterministic_event_id(
        "u1", "acc", "tx1", "v2"
    )
    # parts are separated, so shifting characters between parts changes the id
    assert deterministic_event_id("ab", "c") != deterministic_event_id("a", "bc")


def test_account_key():
    assert account_key("u1", "123") == "u1:123"
