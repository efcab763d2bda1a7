"""What the connector reads of the importer's events on banksync.operations.v1."""

from __future__ import annotations

from pydantic import BaseModel

from shared.schemas import Payload


class AccountDeleted(Payload):
    """`account.deleted`: the user deleted an app account; the bank accounts that fed it import again."""

    user_id: str
    account_id: str
    aggregator_account_id: str | None = None
    generation: int = 1


class BalanceChecked(Payload):
    """`account.balance_checked`: the importer compared the bank's balance with its operations."""

    user_id: str
    account_id: str
    aggregator_account_id: str | None = None
    sync_run_id: str | None = None
    bank_balance: str | None = None
    computed_balance: str | None = None
    balance_gap: str | None = None


IMPORTER_EVENTS: dict[str, type[BaseModel]] = {
    "account.deleted": AccountDeleted,
    "account.balance_checked": BalanceChecked,
}
