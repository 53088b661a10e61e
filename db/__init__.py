"""LUT database: ORM models, sessions, migrations, LUT queries and legacy pickle I/O."""

from db.engine import Database, head_revision, open_database, resolve_url
from db.errors import (
    DatabaseError,
    InvalidKeyError,
    LatlabError,
    LegacyFormatError,
    LUTMissError,
    SchemaError,
)
from db.keys import ConvConfig, ConvFamily
from db.lut import MeasurementValues, find_sweep, load_lut, lookup, record_measurement

__all__ = [
    "ConvConfig",
    "ConvFamily",
    "Database",
    "DatabaseError",
    "InvalidKeyError",
    "LUTMissError",
    "LatlabError",
    "LegacyFormatError",
    "MeasurementValues",
    "SchemaError",
    "find_sweep",
    "head_revision",
    "load_lut",
    "lookup",
    "open_database",
    "record_measurement",
    "resolve_url",
]
