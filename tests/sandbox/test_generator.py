"""Generated bank data: deterministic, about 13 months, French memos per bank, twins, coming lines."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal

import pytest

from sandbox.bankdays import add_months, business_day_on_or_after, is_business_day, last_business_day
from sandbox.banks import BANKS, MemoStyle, bank_by_id, french_iban, iban_is_valid
from sandbox.generator import AccountHistory, AccountKind, generate_connection
from sandbox.memos import infer_type, simplify
from sandbox.views import money

TODAY = date(2025, 3, 14)


def history(bank_id: int = 101, seed: int = 7, key: str = "101", today: date = TODAY):
    bank = bank_by_id(bank_id)
    assert bank is not None
    return generate_connection(seed, bank, key, today)


def as_json(accounts: dict[AccountKind, AccountHistory]) -> str:
    return json.dumps(
        {kind.value: dataclasses.asdict(acc) for kind, acc in accounts.items()}, default=str, sort_keys=True
    )


@pytest.fixture(scope="module")
def all_banks() -> dict[MemoStyle, dict[AccountKind, AccountHistory]]:
    return {bank.style: history(bank.id, key=str(bank.id)) for bank in BANKS}


def test_same_seed_same_bytes_and_other_seed_other_history():
    assert as_json(history()) == as_json(history())
    assert as_json(history(seed=8)) != as_json(history())
    assert as_json(history(key="102")) != as_json(history())


def test_history_spans_about_thirteen_months_up_to_today(all_banks):
    for accounts in all_banks.values():
        checking = accounts[AccountKind.CHECKING]
        first, last = checking.lines[0].date, checking.lines[-1].date
        assert add_months(TODAY, -13) <= first <= add_months(TODAY, -13) + timedelta(days=10)
        assert TODAY - timedelta(days=4) <= last <= TODAY
        assert max(line.rdate for acc in accounts.values() for line in acc.lines) <= TODAY
        assert 800 <= len(checking.lines) <= 1600


def test_memo_formats_per_bank(all_banks):
    expected = {
        MemoStyle.SOCIETE: [
            r"^CARTE X\d{4} \d{2}/\d{2} [A-Z]",
            r"^CARTE X\d{4} RETRAIT DAB \d{2}/\d{2} ",
            r"^PRELEVEMENT EUROPEEN \d+ DE: .+ ID: .+ MOTIF: ",
            r"^VIR RECU \d+ DE: .+ MOTIF: SALAIRE ",
        ],
        MemoStyle.PARIBAS: [
            r"^FACTURE CARTE DU \d{6} .+ CARTE 4974X{8}\d{4}$",
            r"^PRLV SEPA .+ MDT/\S+ ECH/\d{6} ",
            r"^VIR SEPA RECU /DE .+ /MOTIF SALAIRE ",
            r"^RETRAIT DAB \d{2}/\d{2}/\d{2} \d{2}H\d{2} .+ 4974X{8}\d{4}$",
        ],
        MemoStyle.MUTUEL: [
            r"^CB .+ \d{2}/\d{2}/\d{2}$",
            r"^CB RETRAIT DU \d{2}/\d{2} ",
            r"^PRLV SEPA ",
            r"^F COTIS ",
        ],
        MemoStyle.ENLIGNE: [
            r"^CARTE \d{2}/\d{2}/\d{2} .+ CB\*\d{4}$",
            r"^RETRAIT DAB \d{2}/\d{2}/\d{2} .+ CB\*\d{4}$",
        ],
    }
    for style, patterns in expected.items():
        memos = [line.original_wording for line in all_banks[style][AccountKind.CHECKING].lines]
        for pattern in patterns:
            assert any(re.search(pattern, memo) for memo in memos), (style, pattern)
    card_memo = re.compile(r"^FACTURE CARTE DU (\d{2})(\d{2})(\d{2}) ")
    for line in all_banks[MemoStyle.PARIBAS][AccountKind.CHECKING].lines:
        found = card_memo.match(line.original_wording)
        if found:  # the date in the memo is the card-use date (rdate), before or on the debit date
            assert line.rdate == date(2000 + int(found[3]), int(found[2]), int(found[1]))
            assert line.rdate <= line.date


def test_everyday_french_life_is_there(all_banks):
    text = "\n".join(
        line.original_wording
        for accounts in all_banks.values()
        for acc in accounts.values()
        for line in acc.lines
    )
    for word in (
        "SALAIRE", "LOYER", "VEOLIA", "CARREFOUR", "LIDL", "MONOPRIX", "TOTALENERGIES", "NETFLIX", "RETRAIT",
        "COTIS", "INTERETS", "CPAM", "EPARGNE",
    ):  # fmt: skip
        assert word in text, word
    assert re.search(r"EDF|ENGIE", text)
    assert re.search(r"ORANGE|FREE|SFR|BOUYGUES|SOSH", text)
    kinds = Counter(
        line.type for accounts in all_banks.values() for acc in accounts.values() for line in acc.lines
    )
    for kind in (
        "card",
        "transfer",
        "order",
        "withdrawal",
        "bank",
        "payback",
        "deferred_card",
        "summary_card",
    ):
        assert kinds[kind] > 0, kind


def test_genuine_twins_and_coming_lines(all_banks):
    for accounts in all_banks.values():
        checking = accounts[AccountKind.CHECKING]
        booked = Counter(line for line in checking.lines if not line.coming)
        assert sum(1 for count in booked.values() if count >= 2) >= 2
        coming = [line for line in checking.lines if line.coming]
        assert len(coming) >= 2
        assert all(line.date >= TODAY - timedelta(days=5) for line in coming)
        assert checking.coming_cents == sum(line.value_cents for line in coming)


def test_amounts_are_cents_and_json_numbers_keep_two_decimals(all_banks):
    for accounts in all_banks.values():
        for acc in accounts.values():
            for line in acc.lines:
                assert isinstance(line.value_cents, int)
                number = money(line.value_cents)
                assert Decimal(json.dumps(number)) * 100 == line.value_cents


def test_savings_mirror_checking_and_earn_interest(all_banks):
    accounts = all_banks[MemoStyle.SOCIETE]
    savings = accounts[AccountKind.SAVINGS]
    inflows = {(line.date, line.value_cents) for line in savings.lines if line.type == "transfer"}
    outflows = {
        (line.date, -line.value_cents)
        for line in accounts[AccountKind.CHECKING].lines
        if line.type == "transfer"
        and ("EPARGNE" in line.original_wording or "LIVRET" in line.original_wording)
    }
    assert inflows == outflows
    assert sum(1 for line in savings.lines if line.value_cents > 0 and line.type == "transfer") >= 12
    assert any(line.original_wording.startswith("INTERETS") for line in savings.lines)
    assert iban_is_valid(savings.iban or "")


def test_deferred_card_total_is_debited_from_checking(all_banks):
    for accounts in all_banks.values():
        card = accounts[AccountKind.CARD]
        per_debit = Counter[date]()
        for line in card.lines:
            assert line.type in ("deferred_card", "payback")
            assert line.coming == (line.date > TODAY)
            if not line.coming:
                per_debit[line.date] += line.value_cents
        summaries = {
            line.date: line.value_cents
            for line in accounts[AccountKind.CHECKING].lines
            if line.type == "summary_card"
        }
        assert summaries == {day: total for day, total in per_debit.items() if day >= min(summaries)}
        assert (
            card.balance_cents
            == card.coming_cents
            == sum(line.value_cents for line in card.lines if line.coming)
        )


@pytest.mark.parametrize(
    ("memo", "simplified", "kind"),
    [
        ("CARTE X1234 15/11 CARREFOUR CITY", "CARREFOUR CITY", "card"),
        ("FACTURE CARTE DU 120324 AUCHAN CARTE 4974XXXXXXXX1234", "AUCHAN", "card"),
        ("CB CARREFOUR 12/03/24", "CARREFOUR", "card"),
        ("CARTE 01/03/25 MONOPRIX CB*4567", "MONOPRIX", "card"),
        ("AVOIR 17/06/25 DECATHLON CB*1234", "DECATHLON", "payback"),
        ("ANN CARTE FNAC 12/03/24", "FNAC", "payback"),
        ("RETRAIT DAB 12/03/24 14H05 PARIS 11 4974XXXXXXXX1234", "RETRAIT DAB PARIS 11", "withdrawal"),
        ("CARTE X1234 RETRAIT DAB 15/11 LYON 3", "RETRAIT DAB LYON 3", "withdrawal"),
        ("PRLV SEPA EDF CLIENTS MDT/EDF001 ECH/120324 ID EMETTEUR/FR19ZZZ000002", "EDF CLIENTS", "order"),
        ("PRELEVEMENT EUROPEEN 1234567890 DE: ORANGE ID: FR12ZZZ000001 MOTIF: FACTURE", "ORANGE", "order"),
        ("VIR SEPA RECU /DE SAS DUVAL /MOTIF SALAIRE MARS 2025 /REF 1", "SAS DUVAL", "transfer"),
        ("VIR RECU 4827364510 DE: M JEAN MARTIN MOTIF: RESTAU REF: 1", "M JEAN MARTIN", "transfer"),
        ("ECH PRET:1234567 DU 05/03/25", "ECH PRET", "loan_payment"),
        ("COTISATION JAZZ", "COTISATION JAZZ", "bank"),
        ("REM CHQ 1234567", "REM CHQ 1234567", "deposit"),
        ("CHEQUE 1234567", "CHEQUE 1234567", "check"),
        ("SOMETHING ELSE", "SOMETHING ELSE", "unknown"),
    ],
)  # fmt: skip
def test_simplified_wording_and_type(memo, simplified, kind):
    assert simplify(memo) == simplified
    assert infer_type(memo) == kind


def test_generated_card_lines_simplify_to_the_merchant(all_banks):
    for accounts in all_banks.values():
        for line in accounts[AccountKind.CHECKING].lines:
            if line.type == "card":
                short = simplify(line.original_wording)
                assert short
                assert short in line.original_wording
                assert not re.search(r"\d{2}/\d{2}|CB\*\d{4}|4974X{8}", short), short


def test_ibans_and_bank_days():
    assert iban_is_valid(french_iban("30004", "00001", "00012345678"))
    assert not iban_is_valid("FR7630004000010001234567800")
    assert not is_business_day(date(2025, 4, 21))  # Easter Monday
    assert business_day_on_or_after(date(2025, 5, 1)) == date(2025, 5, 2)
    assert last_business_day(2025, 8) == date(2025, 8, 29)
    assert len({bank.id for bank in BANKS}) == len(BANKS) >= 3
