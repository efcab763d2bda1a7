"""The records the Kafka adapter writes: the same wire shape as before the contract models (no nulls
where a field is unknown), and a deterministic id per user and version."""

from __future__ import annotations

from datetime import UTC, datetime

from services.entitlements.adapters.kafka import changed_event, erasure_requested_event
from services.entitlements.domain.commands import change_plan, subscribe
from services.entitlements.domain.history import Actor, ChangeRecord
from services.entitlements.domain.rights import Entitlements, Option, Plan
from services.entitlements.handlers import entitlement_changed
from shared.contract.payloads import EntitlementChanged, UserErasureRequested

AT = datetime(2026, 3, 1, 9, 30, 1, 123000, tzinfo=UTC)


def test_a_change_announces_the_rights_whole_with_what_changed_and_who() -> None:
    change = subscribe(Entitlements.unknown_user("u1"), Option.AUTO_IMPORT)
    assert change is not None
    record = ChangeRecord.of(change, at=AT, request_id="req-1", actor=Actor("billing-backend", "billing"))
    event = changed_event(entitlement_changed(record), correlation_id="req-1", at=AT)
    assert event.type == "fr.budgetfacile.banksync.entitlement.changed.v1"
    assert (event.userid, event.subject, event.correlationid, event.time) == ("u1", "u1", "req-1", AT)
    assert event.data == {
        "user_id": "u1",
        "plan": "standard",
        "options": ["auto_import"],
        "auto_sync_allowed": True,
        "reason": "Option Auto-Import active.",
        "code": "auto_import_option",
        "version": 1,
        "change": {"action": "option_subscribed", "option": "auto_import"},
        "changed_at": "2026-03-01T09:30:01.123000Z",
        "actor": {"sub": "billing-backend", "scope": "billing"},
    }
    assert EntitlementChanged.model_validate(event.data) == entitlement_changed(record)


def test_the_event_id_names_the_user_and_the_version() -> None:
    change = change_plan(Entitlements("u1", version=4), Plan.PREMIUM)
    assert change is not None
    first = ChangeRecord.of(change, at=AT, request_id="r1", actor=Actor("ops-alice", "ops"))
    again = ChangeRecord.of(change, at=AT, request_id="r2", actor=Actor("ops-alice", "ops"))
    ids = {
        changed_event(entitlement_changed(r), correlation_id=r.request_id, at=AT).id for r in (first, again)
    }
    assert len(ids) == 1
    back = change_plan(change.after, Plan.STANDARD)
    assert back is not None
    following = ChangeRecord.of(back, at=AT, request_id="r3", actor=Actor("ops-alice", "ops"))
    assert changed_event(entitlement_changed(following), correlation_id="r3", at=AT).id not in ids


def test_an_old_change_without_an_actor_has_no_actor_field() -> None:
    change = change_plan(Entitlements.unknown_user("u1"), Plan.PREMIUM)
    assert change is not None
    record = ChangeRecord(change.after, change.action, AT, "req", actor=None, plan=Plan.PREMIUM)
    data = changed_event(entitlement_changed(record), correlation_id="req", at=AT).data
    assert "actor" not in data
    assert data["change"] == {"action": "plan_changed", "plan": "premium"}


def test_an_erasure_request_is_keyed_by_the_user() -> None:
    request = UserErasureRequested(user_id="u1", erase_id="e1", requested_at=AT)
    event = erasure_requested_event(request, correlation_id="c1")
    assert event.type == "fr.budgetfacile.banksync.user.erasure_requested.v1"
    assert (event.userid, event.subject, event.correlationid) == ("u1", "u1", "c1")
    assert event.data == {"user_id": "u1", "erase_id": "e1", "requested_at": "2026-03-01T09:30:01.123000Z"}
