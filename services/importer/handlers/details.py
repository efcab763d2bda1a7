"""What the connector says of aggregator accounts (`account.discovered` on banksync.connections.v1)."""

from __future__ import annotations

from collections.abc import Sequence

from services.importer.domain.accounts import BankAccountDetails, details_of, naming_of
from services.importer.domain.identities import auto_account_id
from services.importer.ports import Accounts, Locks
from shared.contract.envelope import account_key
from shared.contract.payloads import AccountDiscovered


class AccountDetails:
    """Keeps the name, IBAN and balance the bank gives each aggregator account, for the app account.

    `locks`: the import path's. The store may apply an update by reading the whole document and writing
    it back (FerretDB), so a name written here while an import adds months to the same account would
    lose them."""

    def __init__(self, accounts: Accounts, locks: Locks) -> None:
        self.accounts = accounts
        self.locks = locks

    async def apply(self, items: Sequence[AccountDiscovered]) -> None:
        for item in items:
            akey = account_key(item.user_id, item.account.aggregator_account_id)
            details = details_of(item, akey)
            if details is None:
                continue
            await self.accounts.put_details(details)
            async with self.locks.hold(akey):
                await self._name_created_account(details)

    async def _name_created_account(self, details: BankAccountDetails) -> None:
        """The account the importer created for it takes the bank's name (never a user's own account)."""
        created = await self.accounts.get(auto_account_id(details.akey))
        if created is None or created.aggregator_account_id != details.aggregator_account_id:
            return
        naming = naming_of(created, details)
        if not naming.empty:
            await self.accounts.rename(created.id, naming)
