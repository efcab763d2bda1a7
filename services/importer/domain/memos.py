"""How alike two bank memos are: the words that name the counterpart, bank boilerplate aside."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Protocol


class Worded(Protocol):
    @property
    def memo(self) -> str: ...
    @property
    def label(self) -> str: ...


_NOISE = frozenset(
    {
        *("CB", "CARTE", "PAIEMENT", "PAIEMT", "PAI", "FACTURE", "FACT", "ACHAT", "AVOIR", "ANN"),
        *("PRLV", "PRELEVEMENT", "PRELEV", "SEPA", "VIR", "VIREMENT", "RECU", "INST", "REF", "MOTIF"),
        *("ECH", "MDT", "ID", "CHQ", "REM", "RETRAIT", "DAB"),
        *("DU", "DE", "DES", "LE", "LA", "LES", "ET", "AU", "AUX", "EN"),
    }
)
_SPLIT = re.compile(r"[^A-Z0-9]+")


@lru_cache(maxsize=65536)
def memo_tokens(text: str) -> frozenset[str]:
    """The words that name the counterpart: no case, accents, card numbers, dates or bank boilerplate."""
    plain = unicodedata.normalize("NFKD", text.upper()).encode("ascii", "ignore").decode()
    return frozenset(
        t for t in _SPLIT.split(plain) if len(t) > 1 and not any(c.isdigit() for c in t) and t not in _NOISE
    )


def memo_similarity(a: Worded, b: Worded) -> float:
    """Overlap of the two lines' words (memo and label); 1.0 when either says nothing useful."""
    left = memo_tokens(a.memo) | memo_tokens(a.label)
    right = memo_tokens(b.memo) | memo_tokens(b.label)
    if not left or not right:
        return 1.0
    return len(left & right) / min(len(left), len(right))
