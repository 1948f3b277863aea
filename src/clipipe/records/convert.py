"""Values from drivers (datetime, Decimal, bytes, UUID...) as JSON-friendly record values."""
from __future__ import annotations

import base64
import datetime as _dt
import decimal
import uuid
from typing import Any


def to_json_value(value: Any) -> Any:
    """A JSON-friendly equivalent of a driver value; unknown values are returned unchanged."""
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        if value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def state_text(value: Any) -> str:
    """How an incremental column's value is kept in the state store and bound on the next run.

    Datetimes keep microseconds and use a space separator, which PostgreSQL, MariaDB/MySQL and SQLite
    all compare correctly against their timestamp columns.
    """
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)
