import pytest

from services.entitlements.domain import (
    Action,
    Entitlements,
    Option,
    OptionIncludedInPlan,
    Plan,
    cancel,
    change_plan,
    decide,
    subscribe,
)


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
