"""Payees, user categories and the rule set of one user: commands that validate and return a new
`RuleSet` (with its version + 1), or raise a `RuleError` whose `code` and `status` the API answers;
and `MatcherCache`, the compiled automatons of rule sets by (user, version)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from services.categorizer.domain.categories import CHILD_ID, DEFAULT_CATEGORY_IDS, ROOT_IDS
from services.categorizer.domain.matching import EMPTY_MATCHER, Matcher, Rule
from services.categorizer.domain.normalise import NOT_WORD, normalise
from shared.text import fold


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
    return " ".join(NOT_WORD.sub(" ", fold(name)).split())


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


class MatcherCache:
    """Compiled automatons by (user, version), LRU-bounded; a version's payees never change."""

    def __init__(self, size: int = 5000) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int], Matcher] = OrderedDict()
        self.compiled = 0

    def peek(self, user_id: str, version: int) -> Matcher | None:
        if version == 0:
            return EMPTY_MATCHER
        found = self._items.get((user_id, version))
        if found is not None:
            self._items.move_to_end((user_id, version))
        return found

    def put(self, user_id: str, version: int, payees: Sequence[Payee]) -> Matcher:
        found = self.peek(user_id, version)
        if found is not None:
            return found
        matcher = Matcher(rule for payee in payees for rule in payee.rules()) if payees else EMPTY_MATCHER
        self.compiled += 1
        self._items[(user_id, version)] = matcher
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return matcher

    def of(self, ruleset: RuleSet) -> Matcher:
        return self.put(ruleset.user_id, ruleset.version, ruleset.payees)
