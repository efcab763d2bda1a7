"""Memo normalisation: what is left of real French bank memos once the bank's own noise is gone."""

from __future__ import annotations

import pytest

from services.categorizer.domain.normalise import analyse, normalise
from shared.text import fold


@pytest.mark.parametrize(
    ("memo", "expected"),
    [
        # Société Générale
        ("CARTE X4021 15/11 MONOPRIX PARIS 15", "MONOPRIX PARIS 15"),
        ("CARTE X4021 RETRAIT DAB 15/11 PARIS 15", "RETRAIT DAB PARIS 15"),
        # BNP Paribas
        ("FACTURE CARTE DU 120324 LECLERC DRIVE CARTE 4974XXXXXXXX1234", "LECLERC DRIVE"),
        (
            "PRLV SEPA FREE MOBILE ECH/150324 ID EMETTEUR/FR12ZZZ123456 MDT/FM-1234567 REF/0612345678",
            "FREE MOBILE",
        ),
        ("RETRAIT DAB 12/03/24 14H05 BNP PARIBAS LILLE", "RETRAIT DAB BNP PARIBAS LILLE"),
        (
            "VIR SEPA RECU /DE CAF DE L ISERE /MOTIF PRESTATIONS /REF 2024031200123",
            "CAF DE L ISERE PRESTATIONS",
        ),
        # La Banque Postale, LCL, Caisse d'Épargne
        ("ACHAT CB AUCHAN 12.03.24 CARTE NUMERO 123", "AUCHAN"),
        ("PRELEVEMENT DE EDF CLIENTS PARTICULIERS", "EDF CLIENTS PARTICULIERS"),
        ("CB CARREFOUR MARKET 12/03/24", "CARREFOUR MARKET"),
        ("CB RETRAIT DU 12/03 LYON", "RETRAIT DU LYON"),
        ("CB LIDL FACT 120324", "LIDL"),
        # Boursorama, Fortuneo
        ("CARTE 01/03/25 UBER EATS CB*4567", "UBER EATS"),
        ("RETRAIT DAB 01/03/25 PARIS 11 CB*9876", "RETRAIT DAB PARIS 11"),
        ("AVOIR 17/06/25 DECATHLON CB*1234", "DECATHLON"),
        ("ECH PRET:1234567 ECHEANCE 03/25", "ECH PRET ECHEANCE"),
        ("CARTE 03/07 SPORT MARKET", "SPORT MARKET"),
        ("ANN CARTE 03/07 ZARA FRANCE", "ZARA FRANCE"),
        # Crédit Mutuel / CIC put the card after the merchant
        ("BOULANGERIE PAUL CARTE 12345678 PAIEMENT CB 1203 STRASBOURG", "BOULANGERIE PAUL STRASBOURG"),
        ("RETRAIT DAB 1203 STRASBOURG CARTE ****", "RETRAIT DAB STRASBOURG"),
        # Crédit Agricole
        ("PAIEMENT PAR CARTE X6487 CARREFOUR CITY 02/01", "CARREFOUR CITY"),
        ("VIREMENT EN VOTRE FAVEUR CAF", "CAF"),
        # case, accents, punctuation, apostrophes
        ("Électricité de France", "ELECTRICITE DE FRANCE"),
        ("McDonald's Gare de l'Est", "MCDONALD S GARE DE L EST"),
        ("H&M / Zara -- Œuvre", "H M ZARA OEUVRE"),
        ("", ""),
        ("CB 12/03", ""),
    ],
)
def test_bank_memos_keep_only_their_meaningful_words(memo: str, expected: str) -> None:
    assert normalise(memo) == expected


def test_transfers_are_told_apart():
    assert analyse("VIR SEPA RECU /DE M JEAN DUPONT /MOTIF LOYER").transfer
    assert analyse("VIREMENT EN VOTRE FAVEUR M FRANCOIS").transfer
    assert analyse("VIR INST RE 582910 DE MARIE DURAND").transfer
    assert not analyse("CB VIRGIN MEGASTORE 12/03").transfer
    assert not analyse("PRLV SEPA FREE MOBILE").transfer


def test_a_merchant_name_that_looks_like_a_prefix_is_kept():
    assert normalise("CB CARTE NOIRE CAFE 12/03") == "NOIRE CAFE"  # leading CARTE is the bank's word
    assert normalise("CB LA CARTE DES VINS 12/03") == "LA CARTE DES VINS"
    assert normalise("CB VIRGIN MEGASTORE 12/03") == "VIRGIN MEGASTORE"


def test_fold_removes_accents_and_ligatures():
    assert fold("Crédit Agricole Île-de-France Œ") == "CREDIT AGRICOLE ILE-DE-FRANCE OE"
