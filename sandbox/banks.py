"""The demo banks (Powens "connectors"), each with its own memo style, and bank-account numbering."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class MemoStyle(StrEnum):
    """How a bank writes its memos (see memos.py)."""

    SOCIETE = "societe"  # Société Générale-like: `CARTE X1234 15/11 CARREFOUR CITY`
    PARIBAS = "paribas"  # BNP Paribas-like: `FACTURE CARTE DU 120324 AUCHAN CARTE 4974XXXXXXXX1234`
    MUTUEL = "mutuel"  # LCL / Crédit Mutuel-like: `CB CARREFOUR 12/03/24`, `F COTIS ...`, `REM CHQ ...`
    ENLIGNE = "enligne"  # Boursorama-like online bank: `CARTE 01/03/25 CARREFOUR CB*4567`


_UUID_NAMESPACE = uuid.UUID("6f1c1d2e-5b7a-4c1e-9a53-2f0d6a7b8c90")


@dataclass(frozen=True)
class DemoBank:
    id: int
    slug: str
    name: str
    style: MemoStyle
    bank_code: str  # 5 digits, the "code banque" of the RIB (fictional)
    bic: str
    color: str
    months_to_fetch: int = 13
    sync_periodicity: float = 1.0  # days between automatic syncs, as Powens gives it

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(_UUID_NAMESPACE, self.slug))

    def to_powens(self) -> dict[str, Any]:
        """The connector object of `GET /2.0/connectors`."""
        return {
            "id": self.id,
            "uuid": self.uuid,
            "name": self.name,
            "hidden": False,
            "charged": True,
            "code": self.bank_code,
            "beta": False,
            "color": self.color,
            "slug": self.slug,
            "sync_periodicity": self.sync_periodicity,
            "months_to_fetch": self.months_to_fetch,
            "siret": None,
            "restricted": False,
            "auth_mechanism": "credentials",
            "capabilities": ["bank"],
            "urls": [],
            "fields": [
                {"name": "login", "label": "Identifiant", "type": "text", "required": True},
                {"name": "password", "label": "Mot de passe", "type": "password", "required": True},
            ],
        }


BANKS: tuple[DemoBank, ...] = (
    DemoBank(101, "BDS", "Banque Démo Société", MemoStyle.SOCIETE, "99101", "BDSOFRPPXXX", "e4002b"),
    DemoBank(102, "BDP", "Banque Démo Paribas", MemoStyle.PARIBAS, "99102", "BDPAFRPPXXX", "00915a"),
    DemoBank(103, "BDM", "Banque Démo Mutuel", MemoStyle.MUTUEL, "99103", "BDMUFRPPXXX", "0061a0"),
    DemoBank(104, "BDL", "Banque Démo En Ligne", MemoStyle.ENLIGNE, "99104", "BDELFRPPXXX", "d6006e"),
)


def bank_by_id(bank_id: int) -> DemoBank | None:
    for bank in BANKS:
        if bank.id == bank_id:
            return bank
    return None


def rib_key(bank_code: str, branch_code: str, account_number: str) -> str:
    """The two-digit key of a French RIB (all-digit account numbers)."""
    value = 89 * int(bank_code) + 15 * int(branch_code) + 3 * int(account_number)
    return f"{97 - value % 97:02d}"


def french_iban(bank_code: str, branch_code: str, account_number: str) -> str:
    """A valid French IBAN (ISO 13616 check digits) for the given RIB parts."""
    bban = f"{bank_code}{branch_code}{account_number}{rib_key(bank_code, branch_code, account_number)}"
    rearranged = f"{bban}FR00"
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    check = 98 - int(numeric) % 97
    return f"FR{check:02d}{bban}"


def iban_is_valid(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1
