"""Matching: whole words only, one automaton for all keywords, the most specific match wins."""

from __future__ import annotations

import pytest

from services.categorizer.domain.dictionary import builtin_dictionary
from services.categorizer.domain.matching import (
    EMPTY_DICTIONARY,
    EMPTY_MATCHER,
    Dictionary,
    Matcher,
    Rule,
    categorize,
)
from services.categorizer.domain.rules import Payee


def user(*payees: Payee) -> Matcher:
    return Matcher(rule for payee in payees for rule in payee.rules())


def global_rule(keyword: str, category: str, name: str | None = None, **flags: object) -> Rule:
    from services.categorizer.domain.normalise import normalise

    payee_id = None if name is None else f"global:{name.lower()}"
    return Rule(keyword, normalise(keyword), category, "global", payee_id, name, **flags)  # type: ignore[arg-type]


BUILTIN = builtin_dictionary()


@pytest.mark.parametrize(
    ("memo", "category"),
    [
        ("CB FREELANCE STUDIO 12/03", None),  # FREE inside FREELANCE
        ("PRLV SEPA FREE MOBILE ECH/010324", "telecom"),
        ("CB ORANGERIE DU CHATEAU 12/03", None),  # ORANGE inside ORANGERIE
        ("PRLV SEPA ORANGE SA-ORANGE", "telecom"),
        ("CB L ORANGE BLEUE 12/03", "loisirs/sport"),  # a gym, not the telecom
        ("CB SFRANCE TRANSPORT 12/03", None),  # SFR inside a longer word
        ("PRLV SEPA SFR", "telecom"),
        ("CB BOULANGERIE AMAZONE 12/03", "alimentation"),  # AMAZON inside AMAZONE
        ("CB BOULANGER LILLE 12/03", "shopping"),  # the electronics chain
        ("CB BOULANGERIE DUPONT 12/03", "alimentation"),  # a bakery
        ("VIR SEPA RECU /DE CARSAT /MOTIF RETRAITE MARS", "revenus/retraite"),
        ("RETRAIT DAB 12/03/24 14H05 LA POSTE LENS", "especes"),  # not La Poste
        ("FRAIS RETRAIT DAB HORS RESEAU", "banque"),  # not a withdrawal
        ("PRLV SEPA AMAZON PRIME", "abonnements/streaming"),  # longest keyword
        ("CARTE 07/03/25 AMAZON MKTPLACE CB*4567", "shopping"),
        ("CB UBER EATS 12/03", "restaurants"),
        ("CB UBER 12/03", "transport"),
        ("PRELEVEMENT EUROPEEN 1 DE: MAIF MOTIF: COTISATION HABITATION", "assurances"),  # name beats word
        ("FACTURE CARTE DU 200325 LECLERC CARBU CARTE 4974XXXXXXXX9911", "carburant"),  # qualifier
        ("VIR SEPA RECU /DE M JEAN LECLERC /MOTIF CADEAU", None),  # a surname in a transfer
        ("VIR SEPA RECU /DE ACME SAS /MOTIF SALAIRE MARS", "revenus/salaire"),
        ("CHEQUE 8412345", None),
        ("CB AU PANIER FRAIS 12/03", None),  # FRAIS counts only as the bank's own first word
    ],
)
def test_builtin_dictionary_decisions(memo: str, category: str | None) -> None:
    assert categorize(memo, EMPTY_MATCHER, BUILTIN).category == category


def test_user_payee_always_beats_the_dictionary_even_with_a_shorter_keyword():
    courses = Payee("p1", "Courses", "alimentation/courses", ("CARREFOUR",))
    found = categorize("CB CARREFOUR MARKET 12/03", user(courses), BUILTIN)
    assert (found.payee_id, found.source, found.keyword, found.category) == (
        "p1",
        "user",
        "CARREFOUR",
        "alimentation/courses",
    )
    assert categorize("CB CARREFOUR MARKET 12/03", EMPTY_MATCHER, BUILTIN).source == "global"


def test_longest_user_keyword_wins_then_earliest_then_name():
    short = Payee("p1", "Uber", "transport", ("UBER",))
    long = Payee("p2", "Uber Eats", "restaurants", ("UBER EATS",))
    assert (
        categorize("CARTE 01/03/25 UBER EATS CB*4567", user(short, long), EMPTY_DICTIONARY).payee_id == "p2"
    )
    a = Payee("pa", "Alpha", "divers", ("ZED",))
    b = Payee("pb", "Beta", "divers", ("YAK",))
    assert categorize("CB YAK ZED", user(a, b), EMPTY_DICTIONARY).payee_id == "pb"  # earliest in the memo
    twin_a = Payee("x2", "Alpha", "divers", ("TWIN",))
    twin_b = Payee("x1", "Beta", "divers", ("TWIN",))
    for matcher in (user(twin_a, twin_b), user(twin_b, twin_a)):  # order of creation does not matter
        assert categorize("CB TWIN", matcher, EMPTY_DICTIONARY).payee_id == "x2"


def test_keywords_match_whole_words_only_and_are_normalised_like_memos():
    payee = Payee("p", "Café du coin", "restaurants", ("Café du Coin", "cb zinc"))
    matcher = user(payee)
    assert categorize("CB CAFE DU COIN 12/03", matcher, EMPTY_DICTIONARY).keyword == "Café du Coin"
    assert categorize("CB ZINC BAR", matcher, EMPTY_DICTIONARY).keyword == "cb zinc"
    assert not categorize("CB CAFE DU COINCHE", matcher, EMPTY_DICTIONARY).recognised
    assert not categorize("CB ZINCOR", matcher, EMPTY_DICTIONARY).recognised


def test_anchored_and_weak_and_transfer_rules():
    rules = [
        global_rule("ACTION", "shopping", "Action", anchored=True),
        global_rule("BOULANGERIE", "alimentation", tier=2),
        global_rule("PAUL", "alimentation", "Paul", in_transfers=False),
    ]
    dictionary = Dictionary(rules)
    assert categorize("CB ACTION 2234 12/03", EMPTY_MATCHER, dictionary).category == "shopping"
    assert not categorize("CB RESTO ACTION 12/03", EMPTY_MATCHER, Dictionary(rules[:1])).recognised
    found = categorize("CB BOULANGERIE PAUL 12/03", EMPTY_MATCHER, dictionary)
    assert found.payee_name == "Paul"  # a name beats a generic word
    assert categorize("VIR SEPA RECU /DE PAUL DURAND", EMPTY_MATCHER, dictionary).category is None
    generic = categorize("CB BOULANGERIE DU PORT", EMPTY_MATCHER, dictionary)
    assert (generic.payee_id, generic.category) == (None, "alimentation")


def letters(i: int) -> str:
    return "".join(chr(ord("A") + (i // 26**k) % 26) for k in range(3))


def test_ten_thousand_keywords_in_one_automaton():
    payees = [Payee(f"p{i}", f"Payee {i}", "divers", (f"SHOP {letters(i)}",)) for i in range(10_000)]
    matcher = user(*payees)
    assert matcher.size == 10_000
    assert categorize(f"CB SHOP {letters(4242)} 12/03", matcher, EMPTY_DICTIONARY).payee_id == "p4242"
    assert not categorize(f"CB SHOP {letters(4242)}X 12/03", matcher, EMPTY_DICTIONARY).recognised
