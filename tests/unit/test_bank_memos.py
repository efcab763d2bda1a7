"""A bank memo with control characters (a scraper's NUL, a stray CR/LF) is imported with spaces in their
place: PostgreSQL, under FerretDB, refuses NUL in any stored text, and memos go into logs and CSV lines."""

from __future__ import annotations

from shared.contract.payloads import AggregatorTransaction


def line(**wording: str | None) -> AggregatorTransaction:
    return AggregatorTransaction.model_validate(
        {"id": 1, "id_account": 2, "date": "2026-03-02", "value": -4.5, **wording}
    )


def test_control_characters_become_spaces():
    tx = line(original_wording="CB PAUL\x00 02/03\r\nPARIS\t15", simplified_wording="PAUL\x1f", wording=None)
    assert tx.original_wording == "CB PAUL  02/03  PARIS 15"
    assert tx.simplified_wording == "PAUL "
    assert tx.wording is None


def test_printable_memos_are_kept_exactly():
    memo = "FACTURE CARTE DU 120324 HALL'S BEER CARTE 4974XXXXXXXX1234 — café €"
    assert line(original_wording=memo).original_wording == memo
