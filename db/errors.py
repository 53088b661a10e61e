"""The project's exceptions. Every error a user can cause derives from :class:`LatlabError`.

The CLI prints a :class:`LatlabError` as one line and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class LatlabError(Exception):
    """Base of every error latlab raises on purpose (bad input, missing data, unusable backend)."""


class InvalidKeyError(LatlabError, ValueError):
    """A LUT key (family string, legacy key, channel count, dtype, ...) is malformed."""


class DatabaseError(LatlabError):
    """The database could not be opened, read or written (driver errors are wrapped in this)."""


class SchemaError(DatabaseError):
    """The database exists but is not a latlab database at a known schema revision."""


class LUTMissError(LatlabError, LookupError):
    """A LUT lookup found no measurement; the message names the missing configuration."""


class LegacyFormatError(LatlabError, ValueError):
    """A legacy HALP/MDP LUT file is malformed, truncated or unsafe to load."""
