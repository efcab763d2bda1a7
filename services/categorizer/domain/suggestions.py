"""Keyword suggestions from a memo: the words that would recognise its payee."""

from __future__ import annotations

import re

from services.categorizer.domain.normalise import analyse, normalise
from services.categorizer.domain.rules import MIN_PATTERN
from shared.text import fold

# words that say nothing about who the payee is
_GENERIC = frozenset(
    " ".join(
        (
            "LE LA LES L DU DE DES D ET AU AUX A EN SUR SOUS PAR POUR CHEZ UN UNE",
            "SARL SAS SASU SA EURL SNC SCI STE SOC SOCIETE ETS ETABLISSEMENTS CIE GROUPE HOLDING",
            "M MR MME MLLE MM MONSIEUR MADAME MADEMOISELLE DR DOCTEUR",
            "BOULANGERIE PATISSERIE BOUCHERIE CHARCUTERIE PHARMACIE RESTAURANT RESTO BAR CAFE BRASSERIE",
            "TABAC",
            "PRESSE EPICERIE SUPERMARCHE SUPERETTE MARCHE MAGASIN BOUTIQUE GARAGE STATION HOTEL PARKING",
            "CABINET CENTRE MAISON LIBRAIRIE FLEURISTE COIFFURE COIFFEUR INSTITUT AUTO SERVICE SERVICES",
            "PAIEMENT FACTURE ACHAT RETRAIT DAB GAB RECU EMIS VIREMENT VIR PRLV SEPA INTERNET WEB WWW COM FR",
            "EUR EURO EUROS TTC HT NET MOTIF REMBOURSEMENT REMB REMBT ECHEANCE CHQ CHEQUE REM REMISE",
            "CLUB ASSOCIATION ASSO AMICALE UNION FEDERATION",
        )
    ).split()
)
# endings that locate rather than name: countries, CEDEX, arrondissements
_PLACE_WORDS = frozenset(("FR", "FRA", "FRANCE", "CEDEX", "LU", "LUX", "IE", "IRL", "NL", "DE", "GB", "UK"))
_CIVILITIES = frozenset(("M", "MR", "MME", "MLLE", "MM", "MONSIEUR", "MADAME", "MADEMOISELLE"))
_TRANSFER_CUT = re.compile(r"/MOTIF\b|\bMOTIF\s*:|/REF\b|\bREF\s*:|/LIB\b|\bLIB\s*:")


def _before_place(words: list[str], places: frozenset[str]) -> list[str]:
    """The words before the first place name, department number or country code (never the first)."""
    for i in range(1, len(words)):
        if words[i].isdigit() or (words[i] in _PLACE_WORDS and i == len(words) - 1):
            return words[:i]
        for size in (4, 3, 2, 1):
            if " ".join(words[i : i + size]) in places:
                return words[:i]
    return words


def suggest_keywords(memo: str, places: frozenset[str] = frozenset(), max_words: int = 3) -> list[str]:
    """Keywords that would recognise this memo's payee: the merchant's words without bank prefixes,
    dates, card numbers, references, transfer motifs or the place at the end; most specific first."""
    text = fold(memo)
    cut = _TRANSFER_CUT.search(text)
    if cut is not None and cut.start() > 0:
        text = text[: cut.start()]
    words = normalise(text).split()
    # a leading civility is not part of a name; the place comes last
    while words and (words[0] in _CIVILITIES or words[0] in ("DE", "DU", "A")):
        words = words[1:]
    words = _before_place(words, places)[:max_words]
    while words and (words[-1] in _GENERIC or len(words[-1]) == 1):
        words.pop()
    if not words or len(" ".join(words)) < MIN_PATTERN:
        return []
    suggestions = [" ".join(words)]
    first = words[0]
    # a merchant's first word alone often names it (LECLERC DRIVE), a person's never does
    transfer = analyse(text).transfer
    if not transfer and len(words) > 1 and len(first) >= 4 and first not in _GENERIC and first not in places:
        suggestions.append(first)
    return suggestions
