"""Payees, keywords and categories: validation, versions, suggestions, the dictionary's own checks."""

from __future__ import annotations

import pytest

from services.categorizer.domain.categories import DEFAULT_CATEGORIES, default_tree
from services.categorizer.domain.dictionary import (
    DictionaryError,
    builtin_dictionary,
    parse_merchants,
    places,
)
from services.categorizer.domain.rules import (
    DuplicateCategory,
    DuplicateKeyword,
    DuplicatePayee,
    InvalidPayee,
    PayeeDraft,
    PayeeNotFound,
    RuleError,
    RuleSet,
    UnknownCategory,
    add_category,
    add_payee,
    remove_payee,
    update_payee,
)
from services.categorizer.domain.suggestions import suggest_keywords


def test_default_tree_is_the_contract_one():
    tree = default_tree()
    assert [(c["id"], c["label"]) for c in tree] == list(DEFAULT_CATEGORIES)
    assert [c["id"] for c in tree] == [
        "alimentation", "restaurants", "logement", "energie", "telecom", "transport", "carburant",
        "sante", "assurances", "abonnements", "shopping", "loisirs", "banque", "impots", "revenus",
        "especes", "epargne", "emprunts", "education", "divers",
    ]  # fmt: skip
    assert dict(DEFAULT_CATEGORIES)["epargne"] == "Épargne et virements internes"
    assert dict(DEFAULT_CATEGORIES)["restaurants"] == "Restaurants et livraisons"
    energie = next(c for c in tree if c["id"] == "energie")
    assert {"id": "energie/electricite", "label": "Électricité", "parent": "energie"} in energie["children"]  # type: ignore[operator]


def test_payee_commands_validate_and_bump_the_version():
    rules = RuleSet("u")
    rules, payee = add_payee(
        rules, PayeeDraft("  Boulangerie   Martin ", "alimentation", ["BOULANGERIE MARTIN"]), "p1"
    )
    assert (rules.version, payee.name, payee.keywords) == (1, "Boulangerie Martin", ("BOULANGERIE MARTIN",))
    with pytest.raises(InvalidPayee):
        add_payee(rules, PayeeDraft("X", "loisirs", ["  "]), "p2")
    with pytest.raises(InvalidPayee, match="empty once"):
        add_payee(rules, PayeeDraft("X", "loisirs", ["CB 12/03"]), "p2")
    with pytest.raises(InvalidPayee):
        add_payee(rules, PayeeDraft("   ", "loisirs", ["ZOO"]), "p2")
    with pytest.raises(UnknownCategory):
        add_payee(rules, PayeeDraft("X", "voyages", ["ZOO"]), "p2")
    with pytest.raises(DuplicatePayee):
        add_payee(rules, PayeeDraft("boulangerie MARTIN", "alimentation", []), "p2")  # case and spaces
    with pytest.raises(DuplicateKeyword):
        add_payee(rules, PayeeDraft("Martin bis", "alimentation", ["Boulangerie-Martin"]), "p2")
    same_words = add_payee(rules, PayeeDraft("Zoo", "loisirs", ["zoo", "ZOO", "Zoo!"]), "p2")[1]
    assert same_words.keywords == ("zoo",)  # one normalised keyword, kept as first written
    renamed, changed = update_payee(rules, "p1", PayeeDraft("Martin", "alimentation", ["MARTIN PAIN"]))
    assert (renamed.version, changed.name, changed.keywords) == (2, "Martin", ("MARTIN PAIN",))
    assert remove_payee(renamed, "p1").payees == ()
    with pytest.raises(PayeeNotFound):
        remove_payee(rules, "nope")
    assert issubclass(PayeeNotFound, RuleError)
    assert (PayeeNotFound.status, DuplicatePayee.status, UnknownCategory.status) == (404, 409, 422)


def test_user_categories_are_children_of_a_default_root():
    rules, category = add_category(RuleSet("u"), "loisirs/sport-co", "Sports collectifs")
    assert (category.parent, rules.version) == ("loisirs", 1)
    assert rules.known_category("loisirs/sport-co")
    assert rules.known_category("energie/electricite")  # a default sub-category
    with pytest.raises(DuplicateCategory):
        add_category(rules, "loisirs/sport-co", "Encore")
    with pytest.raises(UnknownCategory):
        add_category(rules, "voyages/ete", "Été")
    for bad in ("loisirs", "loisirs/", "loisirs/Été", "loisirs/a/b"):
        with pytest.raises(RuleError):
            add_category(rules, bad, "X")
    with_payee, _ = add_payee(rules, PayeeDraft("Club", "loisirs/sport-co", ["HAND CLUB"]), "p")
    assert with_payee.version == 2


@pytest.mark.parametrize(
    ("memo", "suggested"),
    [
        ("CARTE X4021 15/11 CARREFOUR MARKET PARIS 15", ["CARREFOUR MARKET", "CARREFOUR"]),
        ("FACTURE CARTE DU 120324 LECLERC DRIVE CARTE 4974XXXXXXXX1234", ["LECLERC DRIVE", "LECLERC"]),
        ("CB BOULANGERIE MARTIN 12/03/24", ["BOULANGERIE MARTIN"]),
        (
            "PRLV SEPA CLUB DE JUDO DES LILAS ECH/010324 ID EMETTEUR/FR12ZZZ445566 MDT/JUDO42",
            ["CLUB DE JUDO"],
        ),
        ("VIR SEPA RECU /DE M JEAN DUPONT /MOTIF LOYER MARS /REF 123", ["JEAN DUPONT"]),
        ("CARTE 01/03/25 UBER EATS CB*4567", ["UBER EATS", "UBER"]),
        ("MCDONALD'S PARIS GARE DE L'EST", ["MCDONALD"]),
        ("LECLERC CARTE 12345678 PAIEMENT CB 1403 HAGUENAU", ["LECLERC"]),
        ("CHEQUE 8412345", []),
        ("CB 12/03", []),
    ],
)
def test_keywords_suggested_from_a_memo(memo: str, suggested: list[str]) -> None:
    assert suggest_keywords(memo, places()) == suggested


def test_the_dictionary_is_big_and_checked():
    dictionary = builtin_dictionary()
    assert dictionary.payee_count >= 300
    assert builtin_dictionary() is dictionary  # compiled once per process
    with pytest.raises(DictionaryError, match="unknown category"):
        parse_merchants("name,category,keywords,flags,group\nX,voyages,XYZ,,\n")
    with pytest.raises(DictionaryError, match="loses words"):
        parse_merchants("name,category,keywords,flags,group\nX,shopping,SPORT 2000,,\n")
    with pytest.raises(DictionaryError, match="unknown flags"):
        parse_merchants("name,category,keywords,flags,group\nX,shopping,XYZ,strong,\n")


def test_stored_rules_keep_the_payees_of_every_version_since_the_last_reexamination():
    from services.categorizer.adapters.mongo import snapshots_doc, stored_rules_of

    doc = {
        "version": 4,
        "examined_version": 2,
        "payees": [{"id": "p", "name": "P", "category": "divers", "keywords": ["NEW"]}],
        "categories": [],
        "snapshots": [
            {"version": 2, "payees": [{"id": "p", "name": "P", "category": "divers", "keywords": ["OLD"]}]},
            {"version": 3, "payees": []},
        ],
    }
    stored = stored_rules_of(doc, "u")
    assert stored.ruleset.version == 4
    assert stored.payees_at(0) == ()
    assert stored.payees_at(2)[0].keywords == ("OLD",)  # type: ignore[index]
    assert stored.payees_at(3) == ()
    assert stored.payees_at(4)[0].keywords == ("NEW",)  # type: ignore[index]
    assert stored.payees_at(1) is None  # forgotten: a re-examination then publishes today's result
    assert [s["version"] for s in snapshots_doc(stored, since=3)] == [3]
    assert [s["version"] for s in snapshots_doc(stored, since=2)] == [2, 3]
    assert stored_rules_of(None, "u").ruleset.version == 0
