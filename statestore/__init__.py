"""statestore: the durable state store a Python workflow engine sits on.

Workflow definitions, executions, an append-only event log, snapshots, a work-item queue,
API tokens and tenants, on SQLite (embedded default) or PostgreSQL, behind one async facade::

    from statestore import StateStore

    async with await StateStore.open("sqlite:///state.db") as store:
        ...

Each public name is imported from its module on first use (PEP 562), so ``import
statestore`` alone, and the ``statestore`` command's ``--help``, do not load SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from statestore.errors import (
        ConfigurationError,
        ConflictError,
        DatabaseError,
        InvalidTransitionError,
        LeaseLostError,
        MigrationError,
        NotFoundError,
        SequenceConflictError,
        StateStoreError,
        TenantError,
        TenantLimitExceededError,
        TenantSuspendedError,
        ValidationError,
    )
    from statestore.event_kinds import (
        ApprovalReceived,
        BaseEventKind,
        ChildWorkflowCompleted,
        ChildWorkflowFailed,
        ChildWorkflowStarted,
        CustomEvent,
        EventKind,
        ExternalEventReceived,
        InterruptRaised,
        NodeCancelled,
        NodeCompleted,
        NodeFailed,
        NodeScheduled,
        NodeSkipped,
        NodeStarted,
        RetryScheduled,
        TimerCreated,
        TimerFired,
        WorkflowCancelled,
        WorkflowCompleted,
        WorkflowFailed,
        WorkflowStarted,
        parse_event_kind,
    )
    from statestore.models import (
        ApiToken,
        ArtifactRef,
        DeadLetter,
        Event,
        MaterializedState,
        ReclaimResult,
        Snapshot,
        Tenant,
        TenantLimits,
        TenantStatus,
        TokenRole,
        TurnResult,
        WorkflowDefinition,
        WorkflowExecution,
        WorkflowStatus,
        WorkItem,
        WorkItemStatus,
    )
    from statestore.store import PostgresBackend, SqliteBackend, StateStore

__version__ = "0.1.0"


__all__ = [
    "ApiToken",
    "ApprovalReceived",
    "ArtifactRef",
    "BaseEventKind",
    "ChildWorkflowCompleted",
    "ChildWorkflowFailed",
    "ChildWorkflowStarted",
    "ConfigurationError",
    "ConflictError",
    "CustomEvent",
    "DatabaseError",
    "DeadLetter",
    "Event",
    "EventKind",
    "ExternalEventReceived",
    "InterruptRaised",
    "InvalidTransitionError",
    "LeaseLostError",
    "MaterializedState",
    "MigrationError",
    "NodeCancelled",
    "NodeCompleted",
    "NodeFailed",
    "NodeScheduled",
    "NodeSkipped",
    "NodeStarted",
    "NotFoundError",
    "PostgresBackend",
    "ReclaimResult",
    "RetryScheduled",
    "SequenceConflictError",
    "Snapshot",
    "SqliteBackend",
    "StateStore",
    "StateStoreError",
    "Tenant",
    "TenantError",
    "TenantLimitExceededError",
    "TenantLimits",
    "TenantStatus",
    "TenantSuspendedError",
    "TimerCreated",
    "TimerFired",
    "TokenRole",
    "TurnResult",
    "ValidationError",
    "WorkItem",
    "WorkItemStatus",
    "WorkflowCancelled",
    "WorkflowCompleted",
    "WorkflowDefinition",
    "WorkflowExecution",
    "WorkflowFailed",
    "WorkflowStarted",
    "WorkflowStatus",
    "__version__",
    "parse_event_kind",
]

_HOMES = ("statestore.errors", "statestore.event_kinds", "statestore.models", "statestore.store")
"""The modules the names of ``__all__`` come from, cheapest first: a name is looked up in
the first that has it, so an error class never loads the store."""


if not TYPE_CHECKING:  # type checkers see the imports above, and flag a misspelt name

    def __getattr__(name: str) -> Any:
        if name in __all__:
            for home in _HOMES:
                module = importlib.import_module(home)
                if hasattr(module, name):
                    value = getattr(module, name)
                    globals()[name] = value  # later lookups do not come here again
                    return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
