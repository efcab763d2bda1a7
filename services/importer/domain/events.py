"""The events the importer announces on banksync.operations.v1, built from its records: deterministic
ids (a retry or a replay restates an event under the same id), keyed `<user>:<account>`."""

from __future__ import annotations

from collections.abc import Mapping

from services.importer.domain.accounts import Account, account_view
from services.importer.domain.balances import BalanceCheck, amount_of
from services.importer.domain.intake import RawBalance
from services.importer.domain.operations import StoredOperation
from shared.contract.envelope import CloudEvent, account_key, deterministic_event_id
from shared.contract.payloads import (
    AccountBalanceChecked,
    AccountCreated,
    AccountDeleted,
    Operation,
    OperationEvent,
)
from shared.money import format_amount

SERVICE = "importer"

Keyed = tuple[str, CloudEvent]


def operation_event(
    name: str,
    user_id: str,
    operation: Operation,
    *,
    correlation_id: str,
    event_id: str,
    aggregator_account_id: str | None = None,
) -> Keyed:
    """`operation.*` of one operation, keyed by its account."""
    payload = OperationEvent(
        user_id=user_id, operation=operation, aggregator_account_id=aggregator_account_id
    )
    event = CloudEvent.new(
        service=SERVICE,
        name=name,
        data=payload.model_dump(mode="json"),
        user_id=user_id,
        correlation_id=correlation_id,
        subject=operation.id,
        event_id=event_id,
    )
    return account_key(user_id, operation.account_id), event


class Announcer:
    """Builds the `operation.*` events of one batch: deterministic ids, the sync run's correlation id."""

    def __init__(
        self,
        user_id: str,
        correlation: Mapping[str, str],
        default_correlation: str,
        generations: Mapping[str, int],
    ) -> None:
        self.user_id = user_id
        self.correlation = correlation
        self.default_correlation = default_correlation
        self.generations = generations
        self.events: list[Keyed] = []

    def add(self, name: str, op: StoredOperation, txid: str | None, *fact: str) -> None:
        """`fact` names what is restated beyond the operation and its account's life (e.g. a version)."""
        operation = op.operation
        generation = str(self.generations.get(operation.account_id, 1))
        self.events.append(
            operation_event(
                name,
                self.user_id,
                operation,
                correlation_id=self.correlation.get(txid or "", self.default_correlation),
                event_id=deterministic_event_id(name, operation.id, *fact, generation),
                aggregator_account_id=op.aggregator_account_id,
            )
        )


def balance_checked_event(raw: RawBalance, account: Account, check: BalanceCheck) -> CloudEvent:
    """`account.balance_checked`: one id per account, sync run and life of the account."""
    data, generation = raw.data, account.generation
    payload = AccountBalanceChecked(
        user_id=data.user_id,
        account_id=account.id,
        aggregator_account_id=data.aggregator_account_id,
        sync_run_id=check.report.sync,
        bank_balance=format_amount(amount_of(check.bank_cents)),
        computed_balance=format_amount(amount_of(check.computed_cents)),
        balance_gap=format_amount(amount_of(check.gap_cents)),
        currency=account.currency or data.currency,
        generation=generation,
    )
    return CloudEvent.new(
        service=SERVICE,
        name="account.balance_checked",
        data=payload.model_dump(mode="json"),
        user_id=data.user_id,
        correlation_id=raw.event.correlationid,
        subject=account.id,
        event_id=deterministic_event_id(
            "account.balance_checked", account.id, check.report.sync, str(generation)
        ),
    )


def account_created_event(account: Account, correlation_id: str) -> Keyed:
    """`account.created`: one id per account and life of the account."""
    payload = AccountCreated(
        user_id=account.user_id,
        account=account_view(account),
        aggregator_account_id=account.aggregator_account_id,
        generation=account.generation,
    )
    event = CloudEvent.new(
        service=SERVICE,
        name="account.created",
        data=payload.model_dump(mode="json"),
        user_id=account.user_id,
        correlation_id=correlation_id,
        subject=account.id,
        event_id=deterministic_event_id("account.created", account.id, str(account.generation)),
    )
    return account_key(account.user_id, account.id), event


def account_deleted_event(account: Account, operations_deleted: int, correlation_id: str) -> Keyed:
    """`account.deleted`: one id per account and life of the account."""
    payload = AccountDeleted(
        user_id=account.user_id,
        account_id=account.id,
        aggregator_account_id=account.aggregator_account_id,
        generation=account.generation,
        operations_deleted=operations_deleted,
    )
    event = CloudEvent.new(
        service=SERVICE,
        name="account.deleted",
        data=payload.model_dump(mode="json"),
        user_id=account.user_id,
        correlation_id=correlation_id,
        subject=account.id,
        event_id=deterministic_event_id("account.deleted", account.id, str(account.generation)),
    )
    return account_key(account.user_id, account.id), event
