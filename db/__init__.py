"""LUT database: ORM models, sessions, migrations, LUT queries and legacy pickle I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db._lazy import lazy_getattr

if TYPE_CHECKING:
    from db.engine import Database, head_revision, open_database, resolve_url
    from db.errors import (
        DatabaseError,
        InvalidKeyError,
        InvalidValueError,
        LatlabError,
        LegacyFormatError,
        LUTMissError,
        SchemaError,
    )
    from db.keys import ConvConfig, ConvFamily
    from db.lut import MeasurementValues, find_sweep, load_lut, lookup, record_measurement

__all__ = [
    "ConvConfig", "ConvFamily", "Database", "DatabaseError", "InvalidKeyError", "InvalidValueError", "LUTMissError",
    "LatlabError", "LegacyFormatError", "MeasurementValues", "SchemaError", "find_sweep", "head_revision", "load_lut",
    "lookup", "open_database", "record_measurement", "resolve_url",
]
# each name is imported from its submodule on first use (importing one submodule stays light)
__getattr__ = lazy_getattr(__name__, {
    **dict.fromkeys(("Database", "head_revision", "open_database", "resolve_url"), "db.engine"),
    **dict.fromkeys(("DatabaseError", "InvalidKeyError", "InvalidValueError", "LatlabError", "LegacyFormatError",
                     "LUTMissError", "SchemaError"), "db.errors"),
    **dict.fromkeys(("ConvConfig", "ConvFamily"), "db.keys"),
    **dict.fromkeys(("MeasurementValues", "find_sweep", "load_lut", "lookup", "record_measurement"), "db.lut"),
})
