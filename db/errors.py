"""The project's exceptions. Every error a user can cause derives from :class:`LatlabError`.

The CLI prints a :class:`LatlabError` as one line and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class LatlabError(Exception):
    """Base of every error latlab raises on purpose (bad input, missing data, unusable backend)."""


class InvalidValueError(LatlabError, ValueError):
    """A parameter or input has an invalid value; a ``ValueError`` too, as scikit-learn's estimator contract has it
    (``except ValueError`` catches latlab's estimators' errors like scikit-learn's)."""


class InvalidKeyError(InvalidValueError):
    """A LUT key (family string, legacy key, channel count, dtype, ...) is malformed."""


class DatabaseError(LatlabError):
    """The database could not be opened, read or written (driver errors are wrapped in this)."""


class SchemaError(DatabaseError):
    """The database exists but is not a latlab database at a known schema revision."""


class LUTMissError(LatlabError, LookupError):
    """A LUT lookup found no measurement; the message names the missing configuration."""


class LegacyFormatError(LatlabError, ValueError):
    """A legacy HALP/MDP LUT file is malformed, truncated or unsafe to load."""
