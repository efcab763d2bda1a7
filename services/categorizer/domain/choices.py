"""The user's choice for an operation: what it is recognised as once the user chose (it counts as
manual: later rules never overwrite it)."""

from __future__ import annotations

from services.categorizer.domain.matching import Categorization
from services.categorizer.domain.rules import Payee
from shared.contract.payloads import Operation


def manual_of(op: Operation) -> Categorization | None:
    """A manual choice the importer already holds (made in the app, not through this service)."""
    if op.categorized_by is None or op.categorized_by.source != "manual":
        return None
    return Categorization(
        payee_id=op.payee.id if op.payee else op.categorized_by.payee_id,
        payee_name=op.payee.name if op.payee else None,
        category=op.category,
        source="manual",
        keyword=None,
    )


def chosen(payee: Payee | None, category: str | None) -> Categorization:
    """The user's choice: a payee (its category with it), or a category alone."""
    if payee is not None:
        return Categorization(payee.id, payee.name, payee.category, "manual", None)
    return Categorization(category=category, source="manual")
