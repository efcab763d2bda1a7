"""Searching, exporting and changing operations: the pure rules (domain, export, shared.text)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from services.importer import export
from services.importer.adapters.mongo import searchable
from services.importer.domain.identities import line_ref, operation_id
from services.importer.domain.lines import (
    AccountLines,
    ImportMode,
    ManualCandidate,
    Observation,
    Target,
    apply,
    diff,
    version_of,
)
from services.importer.domain.operations import OperationQuery, Searchable, in_category, refusal_of_change
from shared.contract.payloads import Operation
from shared.text import all_words_prefix, fold, words_of

AKEY = "u1:acc-9"
RECONCILE = Target(AKEY, "account-1", ImportMode.RECONCILE)
DAY = dt.date(2026, 3, 10)
T0 = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)


def obs(
    txid: str, amount: str = "-42.50", *, at: int = 0, removed: bool = False, memo: str = "PRLV EDF"
) -> Observation:
    return Observation(
        txid=txid,
        date=DAY,
        amount=Decimal(amount),
        memo=memo,
        label="EDF",
        pending=False,
        removed=removed,
        version=version_of(T0 + dt.timedelta(hours=at), pending=False, removed=removed, content=memo),
        seen=DAY,
    )


def op(**fields: object) -> Searchable:
    base: dict[str, object] = {
        "words": words_of("PRLV SEPA EDF Électricité", "Électricité de France"),
        "cents": -4250,
        "status": "booked",
        "source": "bank",
        "reconciled": False,
        "category": "energie/electricite",
        "payee_id": "p-edf",
    }
    return Searchable(**{**base, **fields})  # type: ignore[arg-type]


# ---- words -------------------------------------------------------------------------------------------


def test_words_are_folded_once_each_and_sorted():
    assert fold("Crédit Agricole Œuvre") == "CREDIT AGRICOLE OEUVRE"
    assert words_of("Électricité EDF", "edf 12/03") == ["03", "12", "edf", "electricite"]
    assert words_of("", "  !! ") == []


def test_every_word_of_the_query_must_begin_a_word():
    words = words_of("CB CARREFOUR MARKET 12/03", "Carrefour Market")
    assert all_words_prefix(words_of("carref"), words)
    assert all_words_prefix(words_of("MARKET carrefour"), words)
    assert not all_words_prefix(words_of("carrefour lidl"), words)
    assert not all_words_prefix(words_of("arket"), words)  # inside a word: no
    assert all_words_prefix([], words)


# ---- the query ---------------------------------------------------------------------------------------


def test_accents_and_case_are_ignored_both_ways():
    assert OperationQuery(words=tuple(words_of("ELECTRICITE"))).takes(op())
    assert OperationQuery(words=tuple(words_of("électr"))).takes(op())
    assert not OperationQuery(words=tuple(words_of("gaz"))).takes(op())


def test_a_category_takes_its_children_not_its_look_alikes():
    assert in_category("energie", "energie")
    assert in_category("energie/electricite", "energie")
    assert not in_category("energies", "energie")
    assert not in_category("energie", "energie/electricite")
    assert not in_category(None, "energie")
    assert OperationQuery(category="energie").takes(op())
    assert not OperationQuery(category="energie/gaz").takes(op())


def test_amount_bounds_are_inclusive():
    assert OperationQuery(min_cents=-4250, max_cents=-4250).takes(op())
    assert not OperationQuery(min_cents=-4249).takes(op())
    assert not OperationQuery(max_cents=-4251).takes(op())


def test_every_filter_given_must_hold():
    query = OperationQuery(status="booked", source="bank", reconciled=False, payee_id="p-edf")
    assert query.takes(op())
    assert not query.takes(op(status="pending"))
    assert not query.takes(op(source="manual"))
    assert not query.takes(op(reconciled=True))
    assert not query.takes(op(payee_id=None))
    assert OperationQuery().empty
    assert OperationQuery().takes(op())
    assert query.needs_categorization
    assert not OperationQuery(status="booked").needs_categorization
    # what the document says is checked before its categorisation is read
    assert OperationQuery(category="alimentation").takes_stored(op())


def test_a_document_stored_before_words_were_kept_is_searched_all_the_same():
    old = {
        "_id": "o1",
        "memo": "PRLV SEPA ÉNERGIE",
        "label": "Engie",
        "amount": "-10.00",
        "date": "2026-01-02",
    }
    found = searchable(old)
    assert list(found.words) == words_of("PRLV SEPA ÉNERGIE", "Engie")
    assert (found.cents, found.status, found.source, found.reconciled) == (-1000, "booked", "bank", False)
    assert found.category is None
    assert found.payee_id is None
    stored = searchable({**old, "words": ["x"], "cents": -5, "payee": {"id": "p", "name": "P"}})
    assert (list(stored.words), stored.cents, stored.payee_id) == (["x"], -5, "p")


# ---- changes the user makes ---------------------------------------------------------------------------


def test_who_may_change_what():
    assert refusal_of_change("bank", False, moves=False) == "bank_operation"
    assert refusal_of_change("manual", True, moves=True) == "reconciled_operation"
    assert refusal_of_change("manual", True, moves=False) is None  # its label stays the user's
    assert refusal_of_change("manual", False, moves=True) is None


def reconciled_state() -> AccountLines:
    state = AccountLines(manual={"m1": ManualCandidate("m1", DAY, Decimal("-42.50"))})
    after, changes = apply(state, [obs("100")], RECONCILE)
    assert [m for m, _ in changes.reconciled] == ["m1"]
    return after


def test_undoing_a_match_gives_the_line_its_own_operation():
    before = reconciled_state()
    after = before.copy()
    line = after.undo_reconciliation("m1", AKEY)
    assert line is not None
    assert line.reconciles is None
    assert line.op_id == operation_id(AKEY, "100", "undone:m1")
    assert after.manual["m1"].reconciled_by is None
    changes = diff(before, after)
    assert [x.txid for x in changes.imported] == ["100"]
    assert [m for m, _ in changes.unreconciled] == ["m1"]
    assert after.copy().undo_reconciliation("m1", AKEY) is None  # nothing left to undo


def test_an_undone_match_is_never_made_again():
    after = reconciled_state()
    after.undo_reconciliation("m1", AKEY)
    refused = ManualCandidate("m1", DAY, Decimal("-42.50"), refused=frozenset({line_ref(AKEY, "100")}))
    # the same version again, a newer one, a deletion then the line back: it stays its own operation
    for observations in (
        [obs("100")],
        [obs("100", at=3, memo="PRLV SEPA EDF")],
        [obs("100", at=3, removed=True), obs("100", at=6)],
    ):
        state = AccountLines(dict(after.lines), {"m1": refused})
        again, changes = apply(state, observations, RECONCILE)
        assert not changes.reconciled, observations
        assert again.manual["m1"].reconciled_by is None
        assert any(line.op_id for line in again.lines.values() if line.txid == "100")
    # another line of that amount may still match the manual operation
    other, changes = apply(AccountLines(dict(after.lines), {"m1": refused}), [obs("101")], RECONCILE)
    assert [(m, line.txid) for m, line in changes.reconciled] == [("m1", "101")]
    assert other.manual["m1"].reconciled_by == line_ref(AKEY, "101")


# ---- the CSV export -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["=1+1", "+33 6", "-rm", "@SUM(A1)", "\tx", "\rx"])
def test_formula_like_cells_get_an_apostrophe(text):
    assert export.guarded(text) == "'" + text


def test_a_row_is_french():
    operation = Operation(
        id="o1",
        account_id="a1",
        date=dt.date(2026, 3, 1),
        amount="-42.50",
        currency="EUR",
        memo='=HYPERLINK("http://x")',
        label="Électricité; EDF",
        status="booked",
        source="bank",
        reconciled=False,
        payee={"id": "p", "name": "@EDF"},  # type: ignore[arg-type]
        category="energie/electricite",
    )
    row = export.row_of(operation)
    assert row == [
        "01/03/2026",
        "Électricité; EDF",
        '\'=HYPERLINK("http://x")',
        "-42,50",
        "EUR",
        "energie/electricite",
        "'@EDF",
        "comptabilisée",
        "banque",
        "non",
    ]
    text = export.lines([row])
    assert text.startswith('01/03/2026;"Électricité; EDF";"\'=HYPERLINK(""http://x"")";-42,50;EUR;')
    assert text.endswith("\r\n")
    assert export.head().startswith(b"\xef\xbb\xbfDate;Libell\xc3\xa9;M\xc3\xa9mo;Montant;")


def test_the_file_name_is_safe():
    today = dt.date(2026, 3, 1)
    assert export.filename_of("Compte joint", today) == "operations-Compte-joint-2026-03-01.csv"
    assert (
        export.filename_of('../../etc/"passwd";\r\nX: y', today) == "operations-etc-passwd-X-y-2026-03-01.csv"
    )
    assert export.filename_of("Épargne ❤", today) == "operations-Epargne-2026-03-01.csv"
    assert export.filename_of("", today) == "operations-compte-2026-03-01.csv"
    header = export.content_disposition("operations-Epargne-2026-03-01.csv")
    assert header == (
        'attachment; filename="operations-Epargne-2026-03-01.csv"; '
        "filename*=UTF-8''operations-Epargne-2026-03-01.csv"
    )
    assert all(c not in export.content_disposition('a"b\r\n;c') for c in "\r\n")
