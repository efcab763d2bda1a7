"""Normalising a raw French bank memo into the words that matter: pure, no I/O.

`normalise` gives upper case without accents or punctuation, without card numbers (`X1234`,
`4974XXXXXXXX1234`, `CB*4567`), dates (`15/11`, `12/03/24`, `120324`, `12.03.24`), times (`14H05`),
references (`MDT/`, `ECH/`, `ID EMETTEUR/`, `REF:`) and the bank's own prefixes (`CB`, `CARTE`,
`FACTURE CARTE DU`, `PRLV SEPA`, `ACHAT CB`, `VIR SEPA RECU /DE`, ...). Keywords go through the same
function, so both sides always agree; words are separated by exactly one space (see matching).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.text import fold

# Pieces that carry no meaning for recognition, each replaced by a space. Each pattern runs only on
# memos that contain a character it needs (a memo is normalised in a few microseconds).
_REFERENCES = re.compile(
    "|".join(
        (
            # SEPA references and their values: MDT/xxx ECH/xxx ID EMETTEUR/xxx REF:xxx /RUM xxx
            r"\b(?:ID EMETTEUR|MDT|ECH|ID|REF|RUM|NNE|EREF|PREF|RCUR|FRST|NUM|REFDO|REFBEN)\s*[/:.]\s*\S*",
            r"/(?:REF|ID|RUM|MDT|ECH|NNE|EREF|NOTPROVIDED)\b\s*\S*",
            # field markers of transfers: the marker goes, the content stays
            r"/(?:DE|MOTIF|A|POUR|BEN|BENEF|LIB|FRM|TO|EMETTEUR|DONNEUR)\b",
            r"\b(?:DE|MOTIF|LIB|POUR|BEN|LIBELLE|EMETTEUR)\s*:",
        )
    )
)
_NUMERO = re.compile(r"\bN\s*°\s*\S+")
# card numbers: 4974XXXXXXXX1234, X1234, CB*4567, CARTE ****, CARTE 12345678, CARTE NUMERO 123
_MASKED_CARDS = re.compile(r"\b\d{4,6}[X*]{4,}\d{2,4}\b|\bX+\d{4}\b")
_STARRED_CARDS = re.compile(r"\b(?:CARTE|CB)\s*\*+\s*\d*|\*{2,}\d*")
_CARTE_NUMBERS = re.compile(r"\bCARTE\s+(?:(?:NUMERO|NUM|NO)\s*\d+|\d{4,})\b")
# dates and times: 15/11, 12/03/24, 12.03.2024, 12-03-24, 14H05, 14:05:33
_DATES = re.compile(r"\b\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?\b|\b\d{1,2}[H:]\d{2}(?::\d{2})?\b")
_FACT = re.compile(r"\bFACT\s*\d{4,6}\b")


def _without_noise(text: str) -> str:
    if "/" in text or ":" in text or "." in text:
        text = _REFERENCES.sub(" ", text)
    if "°" in text:
        text = _NUMERO.sub(" ", text)
    if "X" in text:
        text = _MASKED_CARDS.sub(" ", text)
    if "*" in text:
        text = _STARRED_CARDS.sub(" ", text)
    if "CARTE" in text:
        text = _CARTE_NUMBERS.sub(" ", text)
    if "FACT" in text:
        text = _FACT.sub(" ", text)
    return _DATES.sub(" ", text)


NOT_WORD = re.compile(r"[^A-Z0-9]+")
# numbers and codes of 4 digits or more: dates as ddmm/ddmmyy, references, postcodes, card ends
_LONG_NUMBERS = re.compile(r"\b(?=[A-Z0-9]*\d{4})[A-Z0-9]+\b")

# Banks' own words in front of the memo (removed repeatedly at the start) ...
_LEADING_NOISE: tuple[str, ...] = (
    "FACTURE CARTE DU",
    "FACTURE CARTE",
    "FACTURE CB",
    "ACHAT CB",
    "ACHAT CARTE",
    "PAIEMENT CB",
    "PAIEMENT PAR CARTE",
    "PAIEMENT CARTE",
    "PAIEMENT PSC",
    "PAIEMENT PAR",
    "ANN CARTE",
    "ANNULATION CARTE",
    "AVOIR CARTE",
    "AVOIR",
    "CARTE",
    "CB",
    "PRLV SEPA",
    "PRLV EUROPEEN SEPA",
    "PRLV",
    "PRELEVEMENT SEPA",
    "PRELEVEMENT EUROPEEN",
    "PRELEVEMENT DE",
    "PRELEVEMENT",
    "PRELEV",
    "VIR SEPA RECU",
    "VIR SEPA EMIS",
    "VIR SEPA INST RECU",
    "VIR SEPA",
    "VIR RECU",
    "VIR EMIS",
    "VIR INST RE",
    "VIR INST EMIS",
    "VIR INST",
    "VIR INSTANTANE RECU",
    "VIR INSTANTANE EMIS",
    "VIR PERMANENT",
    "VIR EUROPEEN",
    "VIR",
    "VIREMENT SEPA RECU",
    "VIREMENT SEPA EMIS",
    "VIREMENT RECU",
    "VIREMENT EMIS",
    "VIREMENT INSTANTANE",
    "VIREMENT SEPA",
    "VIREMENT DE",
    "VIREMENT EN VOTRE FAVEUR",
    "VIR EN VOTRE FAVEUR",
    "VIREMENT",
    "SEPA",
    "EN VOTRE FAVEUR",
    "VERS",
    "POUR",
)
# ... and wherever they are (Crédit Mutuel / CIC put them after the merchant)
_ANYWHERE_NOISE: tuple[str, ...] = (
    "PAIEMENT CB",
    "PAIEMENT PSC",
    "PAIEMENT PAR CARTE",
    "FACTURE CARTE DU",
    "FACTURE CARTE",
)


def _phrase_index(phrases: Iterable[str]) -> dict[str, list[tuple[str, ...]]]:
    index: dict[str, list[tuple[str, ...]]] = {}
    for phrase in phrases:
        words = tuple(phrase.split())
        index.setdefault(words[0], []).append(words)
    for options in index.values():
        options.sort(key=len, reverse=True)
    return index


_LEADING = _phrase_index(_LEADING_NOISE)
_ANYWHERE = _phrase_index(_ANYWHERE_NOISE)


_TRAILING_NOISE = frozenset(("CARTE", "CB"))
_TRANSFER_WORDS = frozenset(("VIR", "VIREMENT"))


def _strip_noise_words(words: list[str]) -> tuple[list[str], bool]:
    """Drops the bank's own words; tells whether the memo is a transfer (VIR..., VIREMENT ...)."""
    while words and words[-1] in _TRAILING_NOISE:
        words = words[:-1]
    start = 0
    transfer = False
    changed = True
    while changed and start < len(words):
        changed = False
        for phrase in _LEADING.get(words[start], ()):
            if tuple(words[start : start + len(phrase)]) == phrase:
                transfer = transfer or phrase[0] in _TRANSFER_WORDS
                start += len(phrase)
                changed = True
                break
    if start:
        words = words[start:]
    if not any(w in _ANYWHERE for w in words):
        return words, transfer
    kept: list[str] = []
    i = 0
    while i < len(words):
        for phrase in _ANYWHERE.get(words[i], ()):
            if tuple(words[i : i + len(phrase)]) == phrase:
                i += len(phrase)
                break
        else:
            kept.append(words[i])
            i += 1
    return kept, transfer


@dataclass(frozen=True)
class Memo:
    """A memo as recognition sees it: its meaningful words, and whether it is a transfer."""

    text: str
    transfer: bool = False


def analyse(memo: str) -> Memo:
    text = _without_noise(fold(memo))
    text = NOT_WORD.sub(" ", text)
    text = _LONG_NUMBERS.sub(" ", text)
    words, transfer = _strip_noise_words(text.split())
    return Memo(" ".join(words), transfer)


def normalise(memo: str) -> str:
    """The words of a memo that can recognise a payee, one space apart (see the module docstring)."""
    return analyse(memo).text
