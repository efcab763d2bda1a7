"""Bank memos ("libellés") as French banks write them, one style per demo bank, and their simplification.

Pure functions only. `MemoWriter(style)` writes `original_wording`; `simplify()` derives Powens'
`simplified_wording` (prefix, card number and dates stripped: "FACTURE CB HALL'S BEER" -> "HALL'S BEER")
from any memo, the generated ones and those appended through the control API alike; `infer_type()`
guesses the Powens transaction `type` of an appended memo.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from sandbox.banks import MemoStyle


def bank_text(text: str) -> str:
    """Upper-case ASCII without accents, the way bank memos print names."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", ascii_only.upper()).strip()


def masked_card(last4: str) -> str:
    """The card number as Powens' `card` field and BNP-like memos show it."""
    return f"4974XXXXXXXX{last4}"


class MemoWriter:
    """Writes one bank's memos. Every method returns the raw memo (`original_wording`)."""

    def __init__(self, style: MemoStyle) -> None:
        self.style = style

    def card_payment(self, merchant: str, rdate: date, card4: str) -> str:
        merchant = bank_text(merchant)
        match self.style:
            case MemoStyle.SOCIETE:
                return f"CARTE X{card4} {rdate:%d/%m} {merchant}"
            case MemoStyle.PARIBAS:
                return f"FACTURE CARTE DU {rdate:%d%m%y} {merchant} CARTE {masked_card(card4)}"
            case MemoStyle.MUTUEL:
                return f"CB {merchant} {rdate:%d/%m/%y}"
            case MemoStyle.ENLIGNE:
                return f"CARTE {rdate:%d/%m/%y} {merchant} CB*{card4}"

    def card_refund(self, merchant: str, rdate: date, card4: str) -> str:
        merchant = bank_text(merchant)
        match self.style:
            case MemoStyle.SOCIETE:
                return f"CARTE X{card4} REMBT {rdate:%d/%m} {merchant}"
            case MemoStyle.PARIBAS:
                return f"AVOIR CARTE DU {rdate:%d%m%y} {merchant} CARTE {masked_card(card4)}"
            case MemoStyle.MUTUEL:
                return f"ANN CARTE {merchant} {rdate:%d/%m/%y}"
            case MemoStyle.ENLIGNE:
                return f"AVOIR {rdate:%d/%m/%y} {merchant} CB*{card4}"

    def withdrawal(self, place: str, rdate: date, hour: int, minute: int, card4: str) -> str:
        place = bank_text(place)
        match self.style:
            case MemoStyle.SOCIETE:
                return f"CARTE X{card4} RETRAIT DAB {rdate:%d/%m} {place}"
            case MemoStyle.PARIBAS:
                return f"RETRAIT DAB {rdate:%d/%m/%y} {hour:02d}H{minute:02d} {place} {masked_card(card4)}"
            case MemoStyle.MUTUEL:
                return f"CB RETRAIT DU {rdate:%d/%m} {place}"
            case MemoStyle.ENLIGNE:
                return f"RETRAIT DAB {rdate:%d/%m/%y} {place} CB*{card4}"

    def direct_debit(
        self, creditor: str, creditor_id: str, mandate: str, reference: str, label: str, due: date
    ) -> str:
        creditor, label = bank_text(creditor), bank_text(label)
        match self.style:
            case MemoStyle.SOCIETE:
                return (
                    f"PRELEVEMENT EUROPEEN {reference[-10:]} DE: {creditor} ID: {creditor_id} "
                    f"MOTIF: {label} REF: {reference} MANDAT {mandate}"
                )
            case MemoStyle.PARIBAS:
                return (
                    f"PRLV SEPA {creditor} MDT/{mandate} ECH/{due:%d%m%y} "
                    f"ID EMETTEUR/{creditor_id} LIB/{label}"
                )
            case MemoStyle.MUTUEL | MemoStyle.ENLIGNE:
                return f"PRLV SEPA {creditor}"

    def transfer_in(self, debtor: str, motif: str, reference: str, instant: bool = False) -> str:
        debtor, motif = bank_text(debtor), bank_text(motif)
        match self.style:
            case MemoStyle.SOCIETE:
                kind = "VIR INST RECU" if instant else "VIR RECU"
                return f"{kind} {reference[-10:]} DE: {debtor} MOTIF: {motif} REF: {reference}"
            case MemoStyle.PARIBAS:
                kind = "VIR SEPA INST RECU" if instant else "VIR SEPA RECU"
                return f"{kind} /DE {debtor} /MOTIF {motif} /REF {reference}"
            case MemoStyle.MUTUEL:
                return f"VIR SEPA DE {debtor} / {motif}"
            case MemoStyle.ENLIGNE:
                return f"VIR {'INST' if instant else 'SEPA'} {debtor}"

    def transfer_out(self, beneficiary: str, motif: str, reference: str, instant: bool = False) -> str:
        beneficiary, motif = bank_text(beneficiary), bank_text(motif)
        match self.style:
            case MemoStyle.SOCIETE:
                kind = "VIR INST EMIS" if instant else "VIR EUROPEEN EMIS"
                return f"{kind} LOGITEL POUR: {beneficiary} MOTIF: {motif} REF: {reference}"
            case MemoStyle.PARIBAS:
                kind = "VIR SEPA INST EMIS" if instant else "VIR SEPA EMIS"
                return f"{kind} /MOTIF {motif} /BEN {beneficiary} /REFDO {reference}"
            case MemoStyle.MUTUEL:
                return f"VIR SEPA A {beneficiary} / {motif}"
            case MemoStyle.ENLIGNE:
                return f"VIR {'INST' if instant else 'SEPA'} {beneficiary}"

    def package_fee(self) -> str:
        match self.style:
            case MemoStyle.SOCIETE:
                return "COTISATION JAZZ"
            case MemoStyle.PARIBAS:
                return "COMMISSIONS COTISATION ESPRIT LIBRE"
            case MemoStyle.MUTUEL:
                return "F COTIS EUROCOMPTE"
            case MemoStyle.ENLIGNE:
                return "COTISATION OFFRE ULTIM"

    def card_fee(self, card4: str) -> str:
        match self.style:
            case MemoStyle.SOCIETE:
                return f"COTISATION CARTE X{card4}"
            case MemoStyle.PARIBAS:
                return f"COTISATION CARTE VISA {masked_card(card4)}"
            case MemoStyle.MUTUEL:
                return "F COTIS CARTE VISA"
            case MemoStyle.ENLIGNE:
                return f"COTISATION CARTE CB*{card4}"

    def bank_fee(self, label: str) -> str:
        label = bank_text(label)
        return f"F {label}" if self.style is MemoStyle.MUTUEL else f"FRAIS {label}"

    def check_paid(self, number: str) -> str:
        match self.style:
            case MemoStyle.SOCIETE | MemoStyle.PARIBAS:
                return f"CHEQUE {number}"
            case MemoStyle.MUTUEL:
                return f"CHQ. {number}"
            case MemoStyle.ENLIGNE:
                return f"CHQ {number}"

    def check_deposit(self, number: str) -> str:
        match self.style:
            case MemoStyle.SOCIETE | MemoStyle.PARIBAS:
                return f"REMISE CHEQUES {number}"
            case MemoStyle.MUTUEL | MemoStyle.ENLIGNE:
                return f"REM CHQ {number}"

    def deferred_card_summary(self, card4: str, month: date) -> str:
        """The checking-account line debiting last month's deferred card purchases."""
        match self.style:
            case MemoStyle.SOCIETE:
                return f"DEBIT MENSUEL CARTE X{card4} {month:%m/%y}"
            case MemoStyle.PARIBAS:
                return f"FACTURES CARTE DEBIT DIFFERE {masked_card(card4)}"
            case MemoStyle.MUTUEL:
                return f"RELEVE CARTE DIFFERE {month:%m/%y}"
            case MemoStyle.ENLIGNE:
                return f"RELEVE DIFFERE CARTE CB*{card4}"

    def loan_payment(self, reference: str, due: date) -> str:
        match self.style:
            case MemoStyle.SOCIETE:
                return f"ECHEANCE PRET {reference}"
            case MemoStyle.PARIBAS:
                return f"ECHEANCE PRET N {reference}"
            case MemoStyle.MUTUEL:
                return f"REMBOURSEMENT PRET {reference}"
            case MemoStyle.ENLIGNE:
                return f"ECH PRET:{reference} DU {due:%d/%m/%y}"

    def interest(self, year: int) -> str:
        return f"INTERETS CREDITEURS {year}" if self.style is MemoStyle.SOCIETE else f"INTERETS {year}"


# --- simplification ----------------------------------------------------------------------------

_CARD = r"(?:\d{4}X{8}\d{4}|CB\*\d{4}|X\d{4})"
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template)
    for pattern, template in (
        # withdrawals first: their memos also start like card payments
        (r"^CARTE X\d{4} RETRAIT DAB \d{2}/\d{2} (?P<s>.+)$", "RETRAIT DAB {s}"),
        (r"^RETRAIT DAB \d{2}/\d{2}/\d{2} \d{2}H\d{2} (?P<s>.+?) \d{4}X{8}\d{4}$", "RETRAIT DAB {s}"),
        (r"^RETRAIT DAB \d{2}/\d{2}/\d{2} (?P<s>.+?) CB\*\d{4}$", "RETRAIT DAB {s}"),
        (r"^CB RETRAIT DU \d{2}/\d{2} (?P<s>.+)$", "RETRAIT DAB {s}"),
        (r"^RETRAIT DAB \d{4} (?P<s>.+?)(?: CARTE \S+)?$", "RETRAIT DAB {s}"),
        # card payments and refunds
        (r"^CARTE X\d{4} (?:REMBT )?\d{2}/\d{2} (?P<s>.+)$", "{s}"),
        (r"^(?:FACTURE|AVOIR) CARTE DU \d{6} (?P<s>.+?) CARTE \d{4}X{8}\d{4}$", "{s}"),
        (r"^(?:CARTE|AVOIR) \d{2}/\d{2}/\d{2} (?P<s>.+?) CB\*\d{4}$", "{s}"),
        (r"^(?:CARTE|AVOIR|ANN CARTE) \d{2}/\d{2}(?:/\d{2})? (?P<s>.+)$", "{s}"),
        (
            r"^(?:ANN CARTE|CB|FACTURE CB|ACHAT CB) (?P<s>.+?) "
            r"(?:\d{2}[/.]\d{2}[/.]\d{2}|FACT \d{6})(?: .*)?$",
            "{s}",
        ),
        (r"^(?P<s>.+?) CARTE \d{4} PAIEMENT CB \d{4}(?: .*)?$", "{s}"),
        # direct debits
        (r"^PRELEVEMENT EUROPEEN \d+ DE: (?P<s>.+?) ID: .*$", "{s}"),
        (r"^PRLV SEPA (?P<s>.+?)(?: (?:MDT|ECH|ID EMETTEUR|LIB|REF)/.*)?$", "{s}"),
        (r"^PRELEVEMENT (?:DE )?(?P<s>.+)$", "{s}"),
        # transfers
        (r"^VIR (?:INST )?RECU \d+ DE: (?P<s>.+?)(?: MOTIF: .*)?$", "{s}"),
        (r"^VIR SEPA (?:INST )?RECU /DE (?P<s>.+?)(?: /.*)?$", "{s}"),
        (r"^VIR (?:EUROPEEN|INST) EMIS (?:LOGITEL |NET )?POUR: (?P<s>.+?)(?: MOTIF: .*)?$", "{s}"),
        (r"^VIR SEPA (?:INST )?EMIS .*?/BEN (?P<s>.+?)(?: /.*)?$", "{s}"),
        (r"^VIR SEPA (?:DE|A) (?P<s>.+?)(?: / .*)?$", "{s}"),
        (r"^VIR (?:SEPA|INST) (?P<s>.+)$", "{s}"),
        # loans
        (r"^ECH PRET:\S+(?: DU .*)?$", "ECH PRET"),
    )
)
_DATE_TOKEN = re.compile(r"\b\d{2}[/.]\d{2}(?:[/.]\d{2,4})?\b")
_CARD_TOKEN = re.compile(rf"\b{_CARD}(?=\s|$)|CB\*\d{{4}}")


def simplify(original_wording: str) -> str:
    """Powens-like `simplified_wording`: the payee or place, without prefix, card number or dates."""
    text = re.sub(r"\s+", " ", original_wording.upper()).strip()
    for pattern, template in _RULES:
        found = pattern.match(text)
        if found:
            return template.format(s=found.group("s")) if "{s}" in template else template
    stripped = _CARD_TOKEN.sub(" ", text)
    stripped = _DATE_TOKEN.sub(" ", stripped)
    return re.sub(r"\s+", " ", stripped).strip() or text


_TYPE_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"^(?:CARTE X\d{4} RETRAIT|RETRAIT|CB RETRAIT)", "withdrawal"),
        (r"^(?:CARTE X\d{4} REMBT|AVOIR|ANN CARTE|ANN CB|REMBT|REMBOURST)", "payback"),
        (r"^(?:DEBIT MENSUEL CARTE|FACTURES CARTE DEBIT|RELEVE CARTE|RELEVE DIFFERE)", "summary_card"),
        (r"^(?:CARTE|CB|FACTURE CARTE|FACTURE CB|ACHAT CB|PAIEMENT CB)", "card"),
        (r"^(?:PRLV|PRELEVEMENT)", "order"),
        (r"^(?:VIR|VIREMENT)", "transfer"),
        (r"^(?:REMISE CHEQUE|REM CHQ)", "deposit"),
        (r"^(?:CHEQUE|CHQ)", "check"),
        (r"^(?:ECH PRET|ECHEANCE PRET|REMBOURSEMENT PRET)", "loan_payment"),
        (r"^(?:COTISATION|COMMISSION|FRAIS|F |INTERETS DEBITEURS|AGIOS)", "bank"),
        (r"^INTERETS", "deposit"),
    )
)


def infer_type(original_wording: str) -> str:
    """The Powens `type` a memo suggests (`unknown` when nothing does)."""
    text = original_wording.upper().strip()
    for pattern, kind in _TYPE_RULES:
        if pattern.match(text):
            return kind
    if re.search(r"CARTE \d{4} PAIEMENT CB", text):
        return "card"
    return "unknown"
