"""Recognising payees and categories in bank memos: pure rules, no I/O.

- `normalise` turns a raw French bank memo into the words that matter: upper case without accents or
  punctuation, without card numbers (`X1234`, `4974XXXXXXXX1234`, `CB*4567`), dates (`15/11`,
  `12/03/24`, `120324`, `12.03.24`), times (`14H05`), references (`MDT/`, `ECH/`, `ID EMETTEUR/`,
  `REF:`) and the bank's own prefixes (`CB`, `CARTE`, `FACTURE CARTE DU`, `PRLV SEPA`, `ACHAT CB`,
  `VIR SEPA RECU /DE`, ...). Keywords go through the same function, so both sides always agree.
- A `Matcher` compiles every keyword of a rule set into ONE Aho-Corasick automaton: a memo is scanned
  once whatever the number of keywords. Keywords match whole words only (" FREE " never matches in
  " FREELANCE "): both the memo and each keyword are padded with a space, and words are separated by
  exactly one space after normalisation.
- `categorize` picks one match, deterministically: a user payee always beats the built-in dictionary;
  within one source the longest keyword wins, then the earliest in the memo, then the payee name.
- Payee and category commands validate and return a new `RuleSet` (with its version + 1), or raise a
  `RuleError` whose `code` the API answers.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import ahocorasick

from shared.text import fold

Source = Literal["user", "global"]

# ---------------------------------------------------------------------------------------------------
# Categories: the contract's default tree (ids are stable, labels French), plus default sub-categories.

DEFAULT_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("alimentation", "Alimentation"),
    ("restaurants", "Restaurants et livraisons"),
    ("logement", "Logement"),
    ("energie", "Énergie et eau"),
    ("telecom", "Télécom et internet"),
    ("transport", "Transports"),
    ("carburant", "Carburant"),
    ("sante", "Santé"),
    ("assurances", "Assurances"),
    ("abonnements", "Abonnements"),
    ("shopping", "Shopping"),
    ("loisirs", "Loisirs et voyages"),
    ("banque", "Frais bancaires"),
    ("impots", "Impôts et taxes"),
    ("revenus", "Revenus"),
    ("especes", "Retraits d'espèces"),
    ("epargne", "Épargne et virements internes"),
    ("emprunts", "Crédits et prêts"),
    ("education", "Éducation et enfants"),
    ("divers", "Divers"),
)
ROOT_IDS = frozenset(cid for cid, _ in DEFAULT_CATEGORIES)

# Sub-categories every user has (the built-in dictionary uses some of them).
DEFAULT_SUBCATEGORIES: tuple[tuple[str, str], ...] = (
    ("energie/electricite", "Électricité"),
    ("energie/gaz", "Gaz"),
    ("energie/eau", "Eau"),
    ("transport/train", "Train"),
    ("transport/transports-en-commun", "Transports en commun"),
    ("transport/peage", "Péages"),
    ("transport/parking", "Stationnement"),
    ("transport/vehicule", "Entretien du véhicule"),
    ("abonnements/streaming", "Streaming et musique"),
    ("abonnements/presse", "Presse"),
    ("revenus/salaire", "Salaire"),
    ("revenus/prestations", "Prestations sociales"),
    ("revenus/retraite", "Retraite"),
    ("sante/pharmacie", "Pharmacie"),
    ("sante/optique", "Optique"),
    ("loisirs/sport", "Sport"),
    ("loisirs/hebergement", "Hébergement"),
    ("loisirs/jeux", "Jeux"),
    ("impots/amendes", "Amendes"),
)
DEFAULT_CATEGORY_IDS = ROOT_IDS | frozenset(cid for cid, _ in DEFAULT_SUBCATEGORIES)
CHILD_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def default_tree() -> list[dict[str, object]]:
    """The 20 roots of the contract, in its order, each with its default children."""
    children: dict[str, list[dict[str, object]]] = {cid: [] for cid in ROOT_IDS}
    for cid, label in DEFAULT_SUBCATEGORIES:
        children[cid.split("/", 1)[0]].append({"id": cid, "label": label, "parent": cid.split("/", 1)[0]})
    return [
        {"id": cid, "label": label, "parent": None, "children": children[cid]}
        for cid, label in DEFAULT_CATEGORIES
    ]


# ---------------------------------------------------------------------------------------------------
# Normalisation

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


_NOT_WORD = re.compile(r"[^A-Z0-9]+")
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
    text = _NOT_WORD.sub(" ", text)
    text = _LONG_NUMBERS.sub(" ", text)
    words, transfer = _strip_noise_words(text.split())
    return Memo(" ".join(words), transfer)


def normalise(memo: str) -> str:
    """The words of a memo that can recognise a payee, one space apart (see the module docstring)."""
    return analyse(memo).text


# ---------------------------------------------------------------------------------------------------
# Rules and matching

ANCHOR = "^"


@dataclass(frozen=True)
class Rule:
    """One keyword recognising one payee (or, for a generic dictionary word, only a category).

    `tier`: 1 for a name; 2 for a generic word (BOULANGERIE, FRAIS) that any name in the same memo
    beats; 0 for a qualifier that beats names (CARBU in `LECLERC CARBU`, PARAPHARMACIE).
    `anchored`: matches only as the first words of the memo (a brand that is also a common word).
    `in_transfers`: may recognise a transfer (VIR ...); merchants' names are often people's names.
    """

    keyword: str  # as written by its author
    pattern: str  # normalised
    category: str
    source: Source
    payee_id: str | None
    payee_name: str | None
    tier: int = 1
    anchored: bool = False
    in_transfers: bool = True


@dataclass(frozen=True)
class Categorization:
    """What a memo is recognised as; all None when nothing is."""

    payee_id: str | None = None
    payee_name: str | None = None
    category: str | None = None
    source: Literal["user", "global", "manual"] | None = None
    keyword: str | None = None

    @property
    def recognised(self) -> bool:
        return self.category is not None


NOT_RECOGNISED = Categorization()
Rank = tuple[int, int, int, int, str, str, str]


def _rank(rule: Rule, end: int) -> Rank:
    """Smaller is better: user first, then by tier, longest, earliest, then by name and id."""
    return (
        0 if rule.source == "user" else 1,
        rule.tier,
        -len(rule.pattern),
        end - len(rule.pattern),
        rule.payee_name or "",
        rule.payee_id or "",
        rule.keyword,
    )


class Matcher:
    """All the keywords of a rule set in one Aho-Corasick automaton, built once and read-only after.

    The memo is scanned as `^ WORDS `: a keyword is looked for as ` KEYWORD ` (whole words), an
    anchored one as `^ KEYWORD ` (first words only); `^` never occurs in normalised text.
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        by_key: dict[str, list[Rule]] = {}
        for rule in rules:
            if rule.pattern:
                key = f"{ANCHOR} {rule.pattern} " if rule.anchored else f" {rule.pattern} "
                by_key.setdefault(key, []).append(rule)
        self.size = sum(len(v) for v in by_key.values())
        self._automaton: ahocorasick.Automaton | None = None
        if by_key:
            automaton = ahocorasick.Automaton()
            for key, found in by_key.items():
                best_first = tuple(sorted(found, key=lambda r: _rank(r, 0)))
                automaton.add_word(key, (best_first[0], len(key) - 1))
            automaton.make_automaton()
            self._automaton = automaton

    def best(self, normalised: str) -> Rule | None:
        """The best rule whose keyword is in a normalised memo."""
        if self._automaton is None or not normalised:
            return None
        best: Rule | None = None
        best_rank: Rank | None = None
        for end, (rule, _) in self._automaton.iter(f"{ANCHOR} {normalised} "):
            rank = _rank(rule, end)
            if best_rank is None or rank < best_rank:
                best, best_rank = rule, rank
        return best

    def matches(self, normalised: str) -> bool:
        if self._automaton is None or not normalised:
            return False
        for _ in self._automaton.iter(f"{ANCHOR} {normalised} "):
            return True
        return False


EMPTY_MATCHER = Matcher(())


class Dictionary:
    """The built-in rules: one automaton for every memo, one without what may not match a transfer."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.payee_count = len({r.payee_id for r in rules if r.payee_id})
        self.all = Matcher(self.rules)
        self.transfers = Matcher(r for r in self.rules if r.in_transfers)

    def best(self, memo: Memo) -> Rule | None:
        return (self.transfers if memo.transfer else self.all).best(memo.text)


EMPTY_DICTIONARY = Dictionary(())


def _result(rule: Rule | None) -> Categorization:
    if rule is None:
        return NOT_RECOGNISED
    return Categorization(rule.payee_id, rule.payee_name, rule.category, rule.source, rule.keyword)


def categorize_memo(memo: Memo, user: Matcher, builtin: Dictionary) -> Categorization:
    """A user payee always wins over the dictionary; within each, see `_rank`."""
    return _result(user.best(memo.text) or builtin.best(memo))


def categorize(text: str, user: Matcher, builtin: Dictionary) -> Categorization:
    return categorize_memo(analyse(text), user, builtin)


def memo_text(memo: str, label: str = "") -> str:
    """The text recognised for an operation: the bank's raw memo, or its simplified label when empty."""
    return memo if memo.strip() else label


# ---------------------------------------------------------------------------------------------------
# Payees, user categories and the rule set of one user


@dataclass(frozen=True)
class Payee:
    id: str
    name: str
    category: str
    keywords: tuple[str, ...] = ()

    def rules(self) -> list[Rule]:
        return [Rule(k, normalise(k), self.category, "user", self.id, self.name) for k in self.keywords]


@dataclass(frozen=True)
class UserCategory:
    id: str
    label: str

    @property
    def parent(self) -> str:
        return self.id.split("/", 1)[0]


@dataclass(frozen=True)
class RuleSet:
    """Everything one user's recognition depends on; `version` grows with every change."""

    user_id: str
    version: int = 0
    payees: tuple[Payee, ...] = ()
    categories: tuple[UserCategory, ...] = ()

    def payee(self, payee_id: str) -> Payee:
        for payee in self.payees:
            if payee.id == payee_id:
                return payee
        raise PayeeNotFound(f"No payee {payee_id!r}.")

    def known_category(self, category: str) -> bool:
        return category in DEFAULT_CATEGORY_IDS or any(c.id == category for c in self.categories)

    def matcher(self) -> Matcher:
        return Matcher(rule for payee in self.payees for rule in payee.rules())


class RuleError(Exception):
    """A command the rules refuse; `code` and `status` are what the API answers."""

    code = "validation_error"
    status = 422


class InvalidPayee(RuleError):
    pass


class UnknownCategory(RuleError):
    code = "unknown_category"


class DuplicatePayee(RuleError):
    code = "duplicate_payee"
    status = 409


class DuplicateKeyword(RuleError):
    code = "duplicate_keyword"
    status = 409


class DuplicateCategory(RuleError):
    code = "duplicate_category"
    status = 409


class PayeeNotFound(RuleError):
    code = "unknown_payee"
    status = 404


MAX_NAME = 100
MAX_KEYWORD = 100
MAX_KEYWORDS = 50
MIN_PATTERN = 2


@dataclass(frozen=True)
class PayeeDraft:
    name: str
    category: str
    keywords: Sequence[str] = field(default_factory=tuple)


def _name_key(name: str) -> str:
    return " ".join(_NOT_WORD.sub(" ", fold(name)).split())


def clean_keywords(keywords: Sequence[str]) -> tuple[str, ...]:
    """Validated keywords, trimmed, without repeats (two spellings of one normalised form are one)."""
    if len(keywords) > MAX_KEYWORDS:
        raise InvalidPayee(f"A payee has at most {MAX_KEYWORDS} keywords.")
    kept: list[str] = []
    seen: set[str] = set()
    for raw in keywords:
        keyword = " ".join(raw.split())
        if not keyword:
            raise InvalidPayee("A keyword cannot be empty.")
        if len(keyword) > MAX_KEYWORD:
            raise InvalidPayee(f"A keyword has at most {MAX_KEYWORD} characters: {keyword[:20]!r}...")
        pattern = normalise(keyword)
        if len(pattern) < MIN_PATTERN:
            raise InvalidPayee(
                f"The keyword {keyword!r} is empty once bank prefixes, dates, card numbers and "
                "punctuation are removed: it could recognise nothing, or everything."
            )
        if pattern not in seen:
            seen.add(pattern)
            kept.append(keyword)
    return tuple(kept)


def _checked(ruleset: RuleSet, draft: PayeeDraft, payee_id: str) -> Payee:
    name = " ".join(draft.name.split())
    if not name:
        raise InvalidPayee("A payee needs a name.")
    if len(name) > MAX_NAME:
        raise InvalidPayee(f"A payee name has at most {MAX_NAME} characters.")
    if not ruleset.known_category(draft.category):
        raise UnknownCategory(
            f"No category {draft.category!r}: use a default category (GET /v1/categories) "
            "or create it first (POST /v1/users/{user_id}/categories)."
        )
    keywords = clean_keywords(draft.keywords)
    key = _name_key(name)
    for other in ruleset.payees:
        if other.id != payee_id and _name_key(other.name) == key:
            raise DuplicatePayee(f"A payee named {other.name!r} already exists ({other.id}).")
    patterns = {normalise(k): k for k in keywords}
    for other in ruleset.payees:
        if other.id == payee_id:
            continue
        for keyword in other.keywords:
            if normalise(keyword) in patterns:
                raise DuplicateKeyword(
                    f"The keyword {patterns[normalise(keyword)]!r} already recognises the payee "
                    f"{other.name!r} ({other.id})."
                )
    return Payee(payee_id, name, draft.category, keywords)


def add_payee(ruleset: RuleSet, draft: PayeeDraft, payee_id: str) -> tuple[RuleSet, Payee]:
    payee = _checked(ruleset, draft, payee_id)
    return replace(ruleset, version=ruleset.version + 1, payees=(*ruleset.payees, payee)), payee


def update_payee(ruleset: RuleSet, payee_id: str, draft: PayeeDraft) -> tuple[RuleSet, Payee]:
    ruleset.payee(payee_id)
    payee = _checked(ruleset, draft, payee_id)
    payees = tuple(payee if p.id == payee_id else p for p in ruleset.payees)
    return replace(ruleset, version=ruleset.version + 1, payees=payees), payee


def remove_payee(ruleset: RuleSet, payee_id: str) -> RuleSet:
    ruleset.payee(payee_id)
    payees = tuple(p for p in ruleset.payees if p.id != payee_id)
    return replace(ruleset, version=ruleset.version + 1, payees=payees)


def add_category(ruleset: RuleSet, category_id: str, label: str) -> tuple[RuleSet, UserCategory]:
    parent, slash, child = category_id.partition("/")
    if not slash or not CHILD_ID.match(child):
        raise RuleError(
            f"A user category is `parent/child` with a child id of lower-case letters, digits, "
            f"`-` or `_` (got {category_id!r})."
        )
    if parent not in ROOT_IDS:
        raise UnknownCategory(f"No default category {parent!r} to put {category_id!r} under.")
    label = " ".join(label.split())
    if not label or len(label) > MAX_NAME:
        raise RuleError(f"A category label has 1 to {MAX_NAME} characters.")
    if ruleset.known_category(category_id):
        raise DuplicateCategory(f"The category {category_id!r} already exists.")
    category = UserCategory(category_id, label)
    return replace(ruleset, version=ruleset.version + 1, categories=(*ruleset.categories, category)), category


# ---------------------------------------------------------------------------------------------------
# Keyword suggestions from a memo

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


# ---------------------------------------------------------------------------------------------------
# Transfers between the user's own accounts

TRANSFER_CATEGORY = "epargne"
TRANSFER_WINDOW_DAYS = 3
# what a leg of a transfer is categorised as, unless the user chose (a built-in rule: no payee)
TRANSFER_RESULT = Categorization(category=TRANSFER_CATEGORY, source="global")
# a direct debit or a deposit that feeds savings (`PRLV EPARGNE LOGEMENT`, `VERSEMENT LIVRET A`)
_SAVINGS_LEADS = frozenset(("PRLV", "PRELEVEMENT", "PRELEV", "VERSEMENT"))
_SAVINGS_WORDS = frozenset(("EPARGNE", "LIVRET", "LDD", "LDDS", "LEP", "PEL", "CEL"))


def is_transfer_memo(memo: str, label: str = "") -> bool:
    """Whether an operation's wording says money moved by transfer: the bank's transfer prefixes
    (`VIR`, `VIR SEPA`, `VIR INST`, `VIREMENT EN VOTRE FAVEUR`, `VIR SEPA RECU /DE`, ... see
    `_LEADING_NOISE`), or a direct debit or a deposit into savings (`PRLV EPARGNE ...`,
    `VERSEMENT LIVRET A`)."""
    text = memo_text(memo, label)
    if analyse(text).transfer:
        return True
    words = _NOT_WORD.sub(" ", fold(text)).split()
    return bool(words) and words[0] in _SAVINGS_LEADS and not _SAVINGS_WORDS.isdisjoint(words)


@dataclass(frozen=True)
class TransferLeg:
    """An operation that may be one leg of a transfer: its wording is a transfer's (`is_transfer_memo`)."""

    operation_id: str
    account_id: str
    currency: str
    cents: int  # signed: a debit is negative
    date: dt.date


def match_transfers(legs: Iterable[TransferLeg], window_days: int = TRANSFER_WINDOW_DAYS) -> dict[str, str]:
    """Operation id → the other leg's, for every pair of legs that make a transfer between two of the
    user's accounts: opposite amounts in the same currency, two different accounts, dates at most
    `window_days` apart. Each leg has at most one other. Where legs compete, the pairs are taken closest
    dates first, then by the lowest operation ids (the debit's, then the credit's): the answer depends
    only on the set of legs, never on the order they came in, so every replay gives the same pairs."""
    groups: dict[tuple[str, int], tuple[list[TransferLeg], list[TransferLeg]]] = {}
    for leg in legs:
        if leg.cents == 0:
            continue
        debits, credits = groups.setdefault((leg.currency, abs(leg.cents)), ([], []))
        (debits if leg.cents < 0 else credits).append(leg)
    paired: dict[str, str] = {}
    for debits, credits in groups.values():
        if not debits or not credits:
            continue
        pairs = sorted(
            (abs((d.date - c.date).days), d.operation_id, c.operation_id)
            for d in debits
            for c in credits
            if d.account_id != c.account_id and abs((d.date - c.date).days) <= window_days
        )
        for _, debit, credit in pairs:
            if debit not in paired and credit not in paired:
                paired[debit] = credit
                paired[credit] = debit
    return paired


def shown(result: Categorization, manual: Categorization | None, transfer: bool) -> Categorization:
    """What an operation is categorised as: the user's choice, else a transfer's category, else the rules'."""
    if manual is not None:
        return manual
    return TRANSFER_RESULT if transfer else result
