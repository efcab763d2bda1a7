"""French text folded for comparison: no case, no accents, ligatures spelt out. One implementation for
the categorizer's memo recognition and the importer's search of operations."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# C0 controls and DEL: never part of a memo, a label or an id (PostgreSQL, under FerretDB, refuses NUL in
# any text it stores or compares; CR/LF split log lines and headers)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_LIGATURES = str.maketrans({"Œ": "OE", "œ": "oe", "Æ": "AE", "æ": "ae", "ß": "ss"})
_NOT_WORD = re.compile(r"[^A-Z0-9]+")


def fold(text: str) -> str:
    """Upper case, without accents (É → E, Œ → OE)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
        text = "".join(c for c in text if not unicodedata.combining(c))
    return text.upper()


def words_of(*texts: str) -> list[str]:
    """The words of some texts, folded to lower case ASCII letters and digits, each once, sorted
    (`"Électricité EDF", "edf 12/03"` → `["03", "12", "edf", "electricite"]`)."""
    found: set[str] = set()
    for text in texts:
        found.update(w for w in _NOT_WORD.split(fold(text)) if w)
    return sorted(w.lower() for w in found)


def all_words_prefix(wanted: Iterable[str], words: Iterable[str]) -> bool:
    """Whether each of `wanted` (folded, see `words_of`) starts one of `words` (a whole word does)."""
    have = tuple(words)
    return all(any(word.startswith(w) for word in have) for w in wanted)


# a search word's beginning that finds it: from 3 letters (shorter ones would find half the memos) to 12
SEARCH_PREFIX_MIN, SEARCH_PREFIX_MAX = 3, 12


def search_keys(*texts: str) -> list[str]:
    """What a text is found by: its words (see `words_of`) and each word's beginnings of 3 to 12
    letters, each once, sorted (`"EDF Électricité"` → `[..., "edf", "ele", "elec", ..., "electricite"]`).
    Stored on an operation and indexed, they let a search by the beginning of a word read only the
    operations that have it."""
    keys: set[str] = set()
    for word in words_of(*texts):
        keys.add(word)
        keys.update(word[:n] for n in range(SEARCH_PREFIX_MIN, min(len(word), SEARCH_PREFIX_MAX) + 1))
    return sorted(keys)


def search_key(wanted: Iterable[str]) -> str | None:
    """The stored key (see `search_keys`) that finds every text where each of `wanted` (folded) begins a
    word: the longest wanted word's beginning; None when every wanted word is too short to have one."""
    longest = max(wanted, key=len, default="")
    return longest[:SEARCH_PREFIX_MAX] if len(longest) >= SEARCH_PREFIX_MIN else None
