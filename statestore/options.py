"""The options a store is opened with, checked once (``ConfigurationError``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from statestore.db.engine import Durability, SqliteSettings
from statestore.errors import ConfigurationError
from statestore.validation import check_int


@dataclass(frozen=True)
class StoreOptions:
    """What :meth:`StateStore.connect` takes besides the URL and engine options."""

    clock: Callable[[], datetime]
    lease_duration: timedelta
    max_json_bytes: int
    durability: Durability
    busy_timeout: float
    readers: int
    max_artifact_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.lease_duration, timedelta) or self.lease_duration <= timedelta(0):
            raise ConfigurationError("lease_duration must be a positive timedelta")
        if self.durability not in ("NORMAL", "FULL"):
            raise ConfigurationError('durability must be "NORMAL" or "FULL"')
        try:
            check_int("max_json_bytes", self.max_json_bytes, minimum=1)
            check_int("readers", self.readers, minimum=1, maximum=64)
            check_int("max_artifact_bytes", self.max_artifact_bytes, minimum=1)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if not callable(self.clock):
            raise ConfigurationError("clock must be a callable returning an aware datetime")

    @property
    def sqlite(self) -> SqliteSettings:
        """The connection settings of SQLite's engines."""
        return SqliteSettings(
            durability=self.durability, busy_timeout_ms=int(self.busy_timeout * 1000)
        )
