"""The error hierarchy of statestore.

Every public method raises only subclasses of :class:`StateStoreError`. Driver and SQLAlchemy
exceptions are translated once, in :mod:`statestore.db.errors`, and kept as ``__cause__``.
"""

from __future__ import annotations


class StateStoreError(Exception):
    """Base class of every error the store raises."""


class ConfigurationError(StateStoreError):
    """The store was opened with a bad URL or option."""


class ValidationError(StateStoreError, ValueError):
    """Bad input: wrong type, malformed or out of range. Raised before anything is written."""


class NotFoundError(StateStoreError, LookupError):
    """The object does not exist (or belongs to another tenant on a scoped store)."""


class ConflictError(StateStoreError):
    """A duplicate id or key, or a write that conflicts with what is stored."""


class SequenceConflictError(ConflictError):
    """``expected_sequence`` did not match the execution's latest sequence."""


class InvalidTransitionError(StateStoreError):
    """A status change that the state machine does not allow."""


class LeaseLostError(StateStoreError):
    """The caller does not hold the work item's lease (any more)."""


class TenantError(StateStoreError):
    """A tenant does not exist, or the operation is not allowed in this tenant scope."""


class TenantSuspendedError(TenantError):
    """The tenant is suspended or archived: new work is refused."""


class TenantLimitExceededError(TenantError):
    """A tenant limit (concurrent executions, workflows) has been reached."""


class DatabaseError(StateStoreError):
    """The database failed. The driver's exception is the ``__cause__``."""


class MigrationError(StateStoreError):
    """The database schema is not at the revision this package expects, or a migration failed."""


__all__ = [
    "ConfigurationError",
    "ConflictError",
    "DatabaseError",
    "InvalidTransitionError",
    "LeaseLostError",
    "MigrationError",
    "NotFoundError",
    "SequenceConflictError",
    "StateStoreError",
    "TenantError",
    "TenantLimitExceededError",
    "TenantSuspendedError",
    "ValidationError",
]
