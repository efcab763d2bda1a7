"""Built-in dictionary precision and recall on a labelled set of real-format French memos.

`tests/data/labelled_memos.csv`: one memo a line, as banks write them, with the category a person
would give it, or none where nothing can be told (transfers between people, cheques, small shops,
brand names inside other words). `set` is `dev` for the memos written before the dictionary and
`holdout` for those written after it; see tests/data/README.md for how the set was made.

A prediction is right when it is the expected category, or its parent or child (`energie` for
`energie/electricite`): the dictionary may be more or less precise than the label, not different.
Precision: right predictions among all predictions. Recall: right predictions among memos that have
an expected category.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.categorizer.domain.categories import DEFAULT_CATEGORY_IDS, ROOT_IDS
from services.categorizer.domain.dictionary import builtin_dictionary
from services.categorizer.domain.matching import EMPTY_MATCHER, categorize

DATA = Path(__file__).resolve().parents[2] / "data" / "labelled_memos.csv"


def same_category(predicted: str, expected: str) -> bool:
    return predicted == expected or predicted.split("/")[0] == expected or expected.split("/")[0] == predicted


@dataclass
class Score:
    right: int = 0
    wrong: int = 0  # predicted something that is not the label, or where there is none
    wrong_labelled: int = 0  # of which on memos that have a label
    missed: int = 0  # predicted nothing where there is a label

    @property
    def precision(self) -> float:
        return self.right / max(1, self.right + self.wrong)

    @property
    def recall(self) -> float:
        return self.right / max(1, self.right + self.wrong_labelled + self.missed)


def rows() -> list[dict[str, str]]:
    with DATA.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def score(selected: list[dict[str, str]]) -> tuple[Score, list[str]]:
    dictionary = builtin_dictionary()
    total = Score()
    errors: list[str] = []
    for row in selected:
        expected = row["expected_category"] or None
        found = categorize(row["memo"], EMPTY_MATCHER, dictionary)
        predicted = found.category
        if predicted is None:
            if expected is not None:
                total.missed += 1
                errors.append(f"missed  {row['memo']!r} (expected {expected})")
        elif expected is not None and same_category(predicted, expected):
            total.right += 1
        else:
            total.wrong += 1
            if expected is not None:
                total.wrong_labelled += 1
            errors.append(
                f"WRONG   {row['memo']!r} -> {predicted} by {found.keyword!r} (expected {expected})"
            )
    return total, errors


def test_the_labelled_set_is_big_and_well_formed():
    data = rows()
    assert len(data) >= 300
    assert len({r["memo"] for r in data}) == len(data)
    labels = Counter(r["expected_category"] for r in data)
    assert labels[""] >= 50  # plenty that must stay unrecognised
    assert all(c == "" or c in DEFAULT_CATEGORY_IDS for c in labels)
    assert {c.split("/")[0] for c in labels if c} == ROOT_IDS  # every default category is there


def test_builtin_dictionary_precision_and_recall():
    data = rows()
    overall, errors = score(data)
    print(f"\nbuilt-in dictionary on {len(data)} labelled memos:")
    for name in ("dev", "holdout"):
        part, _ = score([r for r in data if r["set"] == name])
        print(f"  {name:8} precision {part.precision:.1%}  recall {part.recall:.1%}")
    print(f"  {'all':8} precision {overall.precision:.1%}  recall {overall.recall:.1%}")
    print("\n".join(f"  {e}" for e in errors))
    assert overall.precision >= 0.98
    assert overall.recall >= 0.80
