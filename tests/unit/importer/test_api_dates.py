"""The importer's API takes dates as ISO 8601 only (pydantic alone also reads numbers as Unix times)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import TypeAdapter, ValidationError

from services.importer.api import IsoDate, ManualOperationIn, ReplayIn

DATE: TypeAdapter[dt.date] = TypeAdapter(IsoDate)


def test_iso_dates_are_read():
    assert DATE.validate_python("2025-03-01") == dt.date(2025, 3, 1)
    assert DATE.validate_python(dt.date(2025, 3, 1)) == dt.date(2025, 3, 1)


@pytest.mark.parametrize("value", [0, "0", 1700000000, "1700000000", "2025-3-1", "2025-03-01T00:00", ""])
def test_anything_else_is_refused(value):
    with pytest.raises(ValidationError):
        DATE.validate_python(value)


def test_bodies_refuse_unix_times():
    with pytest.raises(ValidationError):
        ReplayIn.model_validate_json(b'{"user_id": "u", "aggregator_account_id": "a", "since": 0}')
    with pytest.raises(ValidationError):
        ManualOperationIn.model_validate_json(b'{"date": 1000000000, "amount": "-1.00", "label": "x"}')
    assert ReplayIn.model_validate_json(b'{"user_id": "u", "aggregator_account_id": "a"}').since is None
