"""``statestore ui``: open the store and serve the inspector with uvicorn, on one event loop
(a store belongs to the loop it is first used on)."""

from __future__ import annotations

import asyncio
import ipaddress

import uvicorn

from statestore.db.engine import parse_database_url, require_existing_database
from statestore.errors import ConfigurationError
from statestore.store import StateStore
from statestore.ui.app import create_app


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


async def _serve(url: str | None, host: str, port: int, require_token: bool) -> None:
    require_existing_database(parse_database_url(url))
    store = await StateStore.connect(url)
    try:
        current, head = await store.current_revision(), store.head_revision()
        if current != head:
            raise ConfigurationError(
                f"database at {current or 'base'}, package head {head}: "
                "run `statestore db upgrade` first"
            )
        app = create_app(store, require_token=require_token or not is_loopback(host))
        config = uvicorn.Config(
            app, host=host, port=port, log_level="info", access_log=False, lifespan="off"
        )
        await uvicorn.Server(config).serve()
    finally:
        await store.close()


def serve(url: str | None, *, host: str, port: int, require_token: bool = False) -> None:
    """Serve the inspector until interrupted. Bound to anything but loopback, every request
    needs a store API token."""
    asyncio.run(_serve(url, host, port, require_token))
