"""Recognising payees and categories in normalised memos: pure rules, no I/O.

- A `Matcher` compiles every keyword of a rule set into ONE Aho-Corasick automaton: a memo is scanned
  once whatever the number of keywords. Keywords match whole words only (" FREE " never matches in
  " FREELANCE "): both the memo and each keyword are padded with a space, and words are separated by
  exactly one space after normalisation (see normalise).
- `categorize` picks one match, deterministically: a user payee always beats the built-in dictionary;
  within one source the longest keyword wins, then the earliest in the memo, then the payee name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import ahocorasick

from services.categorizer.domain.normalise import Memo, analyse

Source = Literal["user", "global"]

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
