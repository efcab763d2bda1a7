from datetime import UTC, datetime

import pytest

from services.entitlements.domain.commands import (
    Action,
    OptionIncludedInPlan,
    cancel,
    change_plan,
    subscribe,
)
from services.entitlements.domain.erasure import ERASING_SERVICES, Erasure, ServiceErased, erase_id_of
from services.entitlements.domain.history import Actor, ChangeRecord
from services.entitlements.domain.rights import Entitlements, Option, Plan, decide


def test_unknown_user_is_standard_without_sync():
    user = Entitlements.unknown_user("u1")
    assert user.plan is Plan.STANDARD
    assert user.options == frozenset()
    decision = decide(user)
    assert not decision.allowed
    assert decision.code == "auto_import_required"
    assert decision.reason is not None
    assert "Auto-Import" in decision.reason
    assert "Paramètres" in decision.reason


def test_premium_includes_sync_and_standard_needs_the_option():
    assert decide(Entitlements("u", Plan.PREMIUM)).allowed
    assert decide(Entitlements("u", Plan.STANDARD, frozenset({Option.AUTO_IMPORT}))).allowed


def test_subscribing_twice_is_one_subscription():
    first = subscribe(Entitlements.unknown_user("u"), Option.AUTO_IMPORT)
    assert first is not None
    assert first.action is Action.OPTION_SUBSCRIBED
    assert first.after.version == 1
    assert subscribe(first.after, Option.AUTO_IMPORT) is None


def test_cancel_and_plan_changes_are_idempotent_and_versioned():
    subscribed = subscribe(Entitlements.unknown_user("u"), Option.AUTO_IMPORT)
    assert subscribed is not None
    cancelled = cancel(subscribed.after, Option.AUTO_IMPORT)
    assert cancelled is not None
    assert not decide(cancelled.after).allowed
    assert cancelled.after.version == 2
    assert cancel(cancelled.after, Option.AUTO_IMPORT) is None
    up = change_plan(cancelled.after, Plan.PREMIUM)
    assert up is not None
    assert up.after.version == 3
    assert change_plan(up.after, Plan.PREMIUM) is None


def test_downgrade_keeps_a_paid_option_and_loses_premium_rights():
    standard_with_option = Entitlements("u", Plan.PREMIUM, frozenset({Option.AUTO_IMPORT}), 4)
    down = change_plan(standard_with_option, Plan.STANDARD)
    assert down is not None
    assert decide(down.after).allowed  # the option they pay for stays
    bare = change_plan(Entitlements("u", Plan.PREMIUM, version=2), Plan.STANDARD)
    assert bare is not None
    assert not decide(bare.after).allowed


def test_premium_cannot_buy_what_it_includes():
    with pytest.raises(OptionIncludedInPlan):
        subscribe(Entitlements("u", Plan.PREMIUM), Option.AUTO_IMPORT)


def test_a_change_record_names_what_the_command_named():
    at = datetime(2026, 3, 1, tzinfo=UTC)
    up = change_plan(Entitlements.unknown_user("u"), Plan.PREMIUM)
    assert up is not None
    record = ChangeRecord.of(up, at=at, request_id="r", actor=Actor.of({"sub": "ops-alice", "scope": "ops"}))
    assert (record.user_id, record.version, record.detail) == ("u", 1, {"plan": "premium"})
    assert record.actor is not None
    assert record.actor.as_dict() == {"sub": "ops-alice", "scope": "ops"}
    sub = subscribe(Entitlements.unknown_user("u"), Option.AUTO_IMPORT)
    assert sub is not None
    assert ChangeRecord.of(sub, at=at, request_id="r", actor=record.actor).detail == {"option": "auto_import"}


def test_an_erasure_is_done_when_every_erasing_service_answered():
    at = datetime(2026, 3, 1, tzinfo=UTC)
    assert erase_id_of("u") == erase_id_of("u") != erase_id_of("v")
    asked = Erasure(erase_id_of("u"), "u", at)
    assert asked.state == "in_progress"
    assert asked.services == dict.fromkeys(ERASING_SERVICES)
    answered = {name: ServiceErased(at, 1) for name in ERASING_SERVICES[:-1]} | {
        "retired": ServiceErased(at, 0)
    }
    assert Erasure(asked.erase_id, "u", at, answered).state == "in_progress"
    done = Erasure(asked.erase_id, "u", at, answered | {ERASING_SERVICES[-1]: ServiceErased(at, 2)})
    assert done.state == "done"
    assert "retired" not in done.services
