"""The built-in dictionary (data/merchants.csv) and the place names that keyword suggestions drop.

Loaded and compiled once per process. `merchants.csv` has one merchant, biller, public body or bank
line per row: `name`, `category` (an id of the default tree), `keywords` (`|`-separated; `^KEYWORD`
matches only as the memo's first words) and `flags`: `weak` (a generic word that any named merchant
beats), `qualifier` (a word that says which of a retailer's businesses it is, and beats its name:
`LECLERC CARBU`, `PARAPHARMACIE LECLERC`), `generic` (recognises a category, not a payee),
`transfer` (may recognise a transfer even though its category is not one of `TRANSFER_ROOTS`).

Why here, in the domain, and not behind a port: these files are the rules' own reference data, in CSV
because they are long (the default tree, short, is a literal in `categories`). They are versioned,
reviewed and shipped with the code, read-only, the same in every environment; parsing checks them
against the domain (a category outside the tree, a keyword the normaliser would mangle, an unknown flag
fail the tests, not a deployment). There is nothing to swap for a fake: the tests of the rules measure
this very dictionary. So the parsing is pure (`parse_merchants`, `parse_places`: text in, rules out),
and the only I/O of the domain is the two loaders below, reading the package's own files once per
process. The handlers still receive the `Dictionary` and the places through their constructor (the
composition root passes these; a test may pass a smaller dictionary).
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from functools import cache
from importlib import resources

from services.categorizer.domain.categories import DEFAULT_CATEGORY_IDS
from services.categorizer.domain.matching import ANCHOR, Dictionary, Rule
from services.categorizer.domain.normalise import normalise
from shared.text import fold

# who sends or receives transfers: employers and public bodies, the taxman, savings, lenders,
# health and insurance refunds (a shop's name in a transfer is more often a person's surname)
TRANSFER_ROOTS = frozenset(("revenus", "impots", "epargne", "emprunts", "sante", "assurances"))
GLOBAL_PREFIX = "global:"


def _read(name: str) -> str:
    """A file of the package's data/ (shipped with the code)."""
    return resources.files("services.categorizer").joinpath("data", name).read_text(encoding="utf-8")


def slug(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")


class DictionaryError(ValueError):
    pass


def parse_merchants(text: str) -> list[Rule]:
    rules: list[Rule] = []
    seen: set[str] = set()
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        name, category, flags = row["name"].strip(), row["category"].strip(), set(row["flags"].split())
        if category not in DEFAULT_CATEGORY_IDS:
            raise DictionaryError(f"merchants.csv line {line}: unknown category {category!r}")
        unknown = flags - {"weak", "qualifier", "generic", "transfer"}
        if unknown:
            raise DictionaryError(f"merchants.csv line {line}: unknown flags {sorted(unknown)}")
        payee_id = None if "generic" in flags else GLOBAL_PREFIX + slug(name)
        if payee_id is not None:
            if payee_id in seen:
                raise DictionaryError(f"merchants.csv line {line}: {name!r} twice")
            seen.add(payee_id)
        in_transfers = "transfer" in flags or category.split("/", 1)[0] in TRANSFER_ROOTS
        for raw in row["keywords"].split("|"):
            keyword = raw.strip()
            anchored = keyword.startswith(ANCHOR)
            keyword = keyword.removeprefix(ANCHOR)
            pattern = normalise(keyword)
            if pattern.split() != re.sub(r"[^A-Z0-9]+", " ", fold(keyword)).split():
                raise DictionaryError(
                    f"merchants.csv line {line}: normalising {raw!r} loses words (a bank prefix, a "
                    f"date or a number of 4 digits or more): it would become {pattern!r}"
                )
            rules.append(
                Rule(
                    keyword=keyword,
                    pattern=pattern,
                    category=category,
                    source="global",
                    payee_id=payee_id,
                    payee_name=None if payee_id is None else name,
                    tier=2 if "weak" in flags else 0 if "qualifier" in flags else 1,
                    anchored=anchored,
                    in_transfers=in_transfers,
                )
            )
    return rules


@cache
def builtin_dictionary() -> Dictionary:
    """The dictionary of this process, compiled once."""
    return Dictionary(parse_merchants(_read("merchants.csv")))


def parse_places(text: str) -> frozenset[str]:
    """One place name a line (`#` starts a comment line), normalised as memos' words are."""
    return frozenset(
        " ".join(re.sub(r"[^A-Z0-9]+", " ", fold(line)).split())
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


@cache
def places() -> frozenset[str]:
    """French place names (normalised) that keyword suggestions drop from the end of a memo."""
    return parse_places(_read("places.txt"))
