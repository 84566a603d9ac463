"""The domain models users see: pydantic v2 models and enums. No SQLAlchemy here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    model_validator,
)

from statestore.event_kinds import EventKind
from statestore.validation import check_datetime


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (the default clock)."""
    return datetime.now(UTC)


def _in_utc(value: datetime, info: ValidationInfo) -> datetime:
    """The field's value in UTC; refused (a ValueError to pydantic) if it has no UTC form."""
    return check_datetime(info.field_name or "datetime", value)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
"""An aware datetime, normalised to UTC. Naive datetimes, and datetimes that do not exist
in UTC (year 1 at +05:00), are refused."""


class _Model(BaseModel):
    # Models are mutable; the store re-validates what it is given ("always").
    model_config = ConfigDict(extra="forbid", revalidate_instances="always")


M = TypeVar("M", bound=BaseModel)


def from_database(model: type[M], /, **values: Any) -> M:
    """A model built from a row the store read, without validating it again. Every value
    is already of its field's type: the column types decode them (UUIDs, aware UTC
    datetimes, JSON documents, integers), the row-to-model functions convert enums, and
    the kinds are parsed (and validated) once from their JSON text. Validating such a row
    would check all of that a second time and copy each kind (``revalidate_instances``):
    most of a read's Python time.

    ``values`` name every field, so ``model_fields_set`` is what the validating
    constructor would give. The instance is made the way ``model_construct`` makes it,
    without its per-field loop over defaults and aliases (which costs about what
    validation does); a model with private attributes or a post-init hook, or values that
    do not name every field, go through ``model_construct`` itself."""
    if len(values) != len(model.__pydantic_fields__) or _needs_construct(model):
        return model.model_construct(**values)
    instance = model.__new__(model)
    _set = object.__setattr__
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


@cache
def _needs_construct(model: type[BaseModel]) -> bool:
    return bool(
        model.__pydantic_post_init__
        or model.__private_attributes__
        or model.model_config.get("extra") == "allow"
    )


class WorkflowStatus(StrEnum):
    """Status of a workflow execution."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LIMIT_EXCEEDED = "limit_exceeded"

    @property
    def is_terminal(self) -> bool:
        """Completed, failed, cancelled or limit_exceeded: no way out."""
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """Every non-terminal status (pending, running, paused)."""
        return self not in _TERMINAL


_TERMINAL = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
        WorkflowStatus.LIMIT_EXCEEDED,
    }
)
ACTIVE_STATUSES = tuple(s for s in WorkflowStatus if s.is_active)


class WorkItemStatus(StrEnum):
    """Status of a work item in the queue."""

    PENDING = "pending"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class TokenRole(StrEnum):
    """Role carried by an API token."""

    OPERATOR = "operator"
    DEVELOPER = "developer"
    REVIEWER = "reviewer"
    VIEWER = "viewer"


class TenantStatus(StrEnum):
    """Lifecycle status of a tenant."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    ARCHIVED = "archived"


class WorkflowDefinition(_Model):
    """A published version of a workflow: its intermediate representation as JSON."""

    workflow_id: str
    version: str
    ir: JsonValue
    created_at: UtcDatetime = Field(default_factory=utc_now)
    tenant_id: str = "default"


class WorkflowExecution(_Model):
    """One run of a workflow version."""

    execution_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    workflow_id: str
    workflow_version: str
    status: WorkflowStatus = WorkflowStatus.PENDING
    initial_input: JsonValue = Field(default_factory=dict)
    current_state: JsonValue = Field(default_factory=dict)
    started_at: UtcDatetime = Field(default_factory=utc_now)
    updated_at: UtcDatetime = Field(default_factory=utc_now)
    completed_at: UtcDatetime | None = None
    tenant_id: str = "default"
    # Continue-as-new: the execution this one continues (its previous segment) and its
    # place in the chain (0: the root).
    parent_execution_id: uuid.UUID | None = None
    segment: int = 0


class Event(_Model):
    """One entry of an execution's append-only event log."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    execution_id: uuid.UUID
    sequence: int = 0
    kind: EventKind
    created_at: UtcDatetime = Field(default_factory=utc_now)
    tenant_id: str = "default"
    # The event's place in the database-wide feed (set by the store; increasing in feed
    # order, gaps allowed); ignored on append.
    position: int | None = None


class Snapshot(_Model):
    """Materialised state of an execution covering events ``1..at_sequence``: a resume
    point (see :class:`MaterializedState`)."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    execution_id: uuid.UUID
    at_sequence: int
    state: JsonValue
    status: WorkflowStatus = WorkflowStatus.PENDING
    completed_nodes: dict[str, JsonValue] = Field(default_factory=dict)
    """Node id → its output, for every node completed by ``at_sequence``."""
    active_nodes: list[str] = Field(default_factory=list)
    """Nodes scheduled or started and not yet finished, in the order they became active."""
    last_sequence: int = -1
    """The last event sequence folded in; defaults to ``at_sequence``."""
    created_at: UtcDatetime = Field(default_factory=utc_now)
    tenant_id: str = "default"

    @model_validator(mode="after")
    def _last_sequence_defaults_to_at_sequence(self) -> Snapshot:
        if "last_sequence" not in self.model_fields_set:
            # Set through __dict__: assignment would re-run this validator.
            self.__dict__["last_sequence"] = self.at_sequence
        return self


class MaterializedState(_Model):
    """An execution's history folded (``StateStore.materialize``): the state, the status
    and the nodes' progress after ``last_sequence``."""

    current_state: JsonValue
    status: WorkflowStatus
    completed_nodes: dict[str, JsonValue]
    active_nodes: list[str]
    last_sequence: int


class WorkItem(_Model):
    """A unit of work in the queue, claimed by workers under a lease."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    execution_id: uuid.UUID
    node_id: str
    queue_type: str
    payload: JsonValue = Field(default_factory=dict)
    attempt: int = 0
    max_attempts: int = 3
    priority: int = 0
    status: WorkItemStatus = WorkItemStatus.PENDING
    available_at: UtcDatetime | None = None
    lease_expires_at: UtcDatetime | None = None
    worker_id: str | None = None
    lease_fence: int = 0
    last_error: str | None = None
    created_at: UtcDatetime = Field(default_factory=utc_now)
    tenant_id: str = "default"
    dedupe_key: str | None = None
    """While an item with the same tenant, queue type and key is pending or claimed,
    enqueueing another returns that item's id and writes nothing."""


class ArtifactRef(_Model):
    """A stored artifact: its SHA-256 (hex), its size in bytes and the media type it was
    first stored with."""

    hash: str
    size: int
    media_type: str | None = None


class TurnResult(_Model):
    """What ``commit_turn`` wrote: the events' sequences, the item's new status, the ids of
    the items enqueued (an existing item's id where a dedupe key matched), and the sequence
    the snapshot was taken at (``None`` without one)."""

    sequences: list[int]
    item_status: WorkItemStatus
    enqueued: list[uuid.UUID]
    snapshot_at: int | None


class ReclaimResult(_Model):
    """What ``reclaim_expired_leases`` did: items retried, and items dead-lettered."""

    retryable: list[WorkItem] = Field(default_factory=list)
    exhausted: list[WorkItem] = Field(default_factory=list)


class DeadLetter(_Model):
    """A work item in the dead-letter queue."""

    item: WorkItem
    last_error: str
    dead_lettered_at: UtcDatetime


class ApiToken(_Model):
    """An API token's public record. Never holds the secret or its hash."""

    id: uuid.UUID
    name: str
    role: TokenRole
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    tenant_id: str


class TenantLimits(_Model):
    """Limits of a tenant. The monthly budgets are stored and returned, not enforced."""

    max_concurrent_executions: int | None = None
    max_workflows: int | None = None
    max_tokens_per_month: int | None = None
    max_cost_per_month_usd: float | None = None


class Tenant(_Model):
    """A tenant: the unit of isolation."""

    id: str
    name: str
    status: TenantStatus = TenantStatus.ACTIVE
    policy: JsonValue | None = None
    limits: TenantLimits | None = None
    created_at: UtcDatetime = Field(default_factory=utc_now)
    updated_at: UtcDatetime = Field(default_factory=utc_now)
