"""Reading database URLs without ever repeating a password.

A URL may carry a password (``user:pw@host`` or ``?password=``), and an unparseable one may
carry it anywhere. So no message raised here quotes the URL, a piece of it or a query
value: errors name the part that is wrong (the port, an option's name). They are raised
outside ``except`` blocks, so the parser's own exception, which quotes the URL, is not
chained to them as ``__context__`` either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from statestore.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

URL_ENV_VAR = "STATESTORE_DATABASE_URL"
DIRECT_URL_ENV_VAR = "STATESTORE_DIRECT_URL"
"""The CLI's default ``--direct-url`` (PostgreSQL behind PgBouncer)."""
DEFAULT_URL = "sqlite:///./statestore.db"

ACCEPTED_SCHEMES = (
    "sqlite:///PATH",
    "sqlite:///:memory:",
    "sqlite+aiosqlite:///PATH",
    "postgresql://…",
    "postgres://…",
    "postgresql+asyncpg://…",
)

PG_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
"""libpq's ``sslmode`` values; asyncpg's ``ssl`` connect argument takes the same strings."""

# Values the driver accepts for options with a fixed set of values.
_PG_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": PG_SSL_MODES,
    "ssl": PG_SSL_MODES,
    "target_session_attrs": (
        "any",
        "primary",
        "standby",
        "prefer-standby",
        "read-write",
        "read-only",
    ),
}
# Options that SQLAlchemy's asyncpg dialect may receive more than once (several hosts).
_PG_REPEATABLE = frozenset({"host", "port"})
PG_QUERY_OPTIONS = (
    "sslmode",
    "ssl",
    "password",
    "host",
    "port",
    "target_session_attrs",
    "prepared_statement_cache_size",
    "pgbouncer",
)
"""The query options a PostgreSQL URL may carry; anything else would reach asyncpg's
``connect()`` as an unexpected keyword argument."""
PGBOUNCER_OPTION = "pgbouncer"
"""The store's own query option (``true`` or ``false``): the URL leads to PgBouncer in
transaction pooling mode. Taken out of the URL before it reaches the driver."""


def resolve_url(url: str | URL | None) -> str | URL:
    """The explicit URL, else ``$STATESTORE_DATABASE_URL``, else the embedded default."""
    if url is not None:
        return url
    return os.environ.get(URL_ENV_VAR) or DEFAULT_URL


def parse_url(raw: str | URL) -> URL:
    """``make_url``, with an error that says what is wrong and never repeats the URL."""
    # Imported here, not above: the CLI reads URL_ENV_VAR for its --help without SQLAlchemy.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(raw)
    except ValueError:  # SQLAlchemy's int() of the port
        problem = "its port is not a number"
    except ArgumentError:
        problem = "it is not of the form scheme://user:password@host:port/database"
    raise ConfigurationError(
        f"cannot parse the database URL: {problem} (the URL is not shown: it may hold a "
        "password); accepted: " + ", ".join(ACCEPTED_SCHEMES)
    )


def check_single_at(raw: str | URL) -> None:
    """Refuse a second ``@`` after the one that ends the user and password.

    SQLAlchemy ends the password at its first ``@``; the rest of a password holding an
    unencoded ``@`` would become the host or database name, which errors and ``store.url``
    print.
    """
    if not isinstance(raw, str) or "@" not in raw:
        return
    after_credentials = raw.partition("://")[2].partition("@")[2]
    if "@" in after_credentials.partition("?")[0]:
        raise ConfigurationError(
            "the database URL has more than one '@': write an '@' inside the user name or "
            "password as %40 (the URL is not shown: it may hold a password)"
        )


def check_port(port: object, where: str = "port") -> None:
    """A TCP port is a whole number from 1 to 65535 (``None`` or empty: the default)."""
    if port is None or port == "":
        return
    text = str(port).strip()
    if not text.isdigit():
        raise ConfigurationError(f"the database URL's {where} is not a number")
    if not 1 <= int(text) <= 65535:
        raise ConfigurationError(f"the database URL's {where} is {int(text)}, not in 1-65535")


def normalise_postgres_url(url: URL) -> tuple[URL, bool]:
    """``url`` for the asyncpg dialect: every query option known and checked, ``sslmode``
    renamed to asyncpg's ``ssl``, and a ``?password=`` moved to the URL's password field,
    where ``render_as_string`` hides it; and whether it leads to PgBouncer in transaction
    pooling mode (``?pgbouncer=true``, taken out of the URL)."""
    check_port(url.port)
    query = dict(url.query)
    _check_option_names(query)
    for name, allowed in _PG_CHOICES.items():
        if name in query and query[name] not in allowed:
            raise ConfigurationError(
                f"the database URL's {name} option must be one of: " + ", ".join(allowed)
            )
    _check_query_ports(query)
    cache_size = query.get("prepared_statement_cache_size")
    if cache_size is not None and not str(cache_size).isdigit():
        raise ConfigurationError(
            "the database URL's prepared_statement_cache_size option must be a whole number"
        )
    pgbouncer = _pgbouncer_option(query)
    query = _ssl_option(query)
    password = query.pop("password", None)
    if isinstance(password, str):  # given once: _check_option_names refused repeats
        if url.password is not None:
            raise ConfigurationError(
                "the database URL gives a password twice (user:password@ and ?password=)"
            )
        url = url.set(password=password)
    return url.set(drivername="postgresql+asyncpg", query=query), pgbouncer


def _check_option_names(query: dict[str, str | tuple[str, ...]]) -> None:
    """Every option is one asyncpg takes, and only host and port are repeated. Names only:
    an option's value may be a secret."""
    unknown = sorted(set(query) - set(PG_QUERY_OPTIONS))
    if unknown:
        raise ConfigurationError(
            "unknown option(s) in the PostgreSQL URL: "
            + ", ".join(repr(name) for name in unknown)
            + "; accepted: "
            + ", ".join(PG_QUERY_OPTIONS)
        )
    for name, value in query.items():
        if name not in _PG_REPEATABLE and not isinstance(value, str):
            raise ConfigurationError(f"the database URL gives the {name} option more than once")


def _check_query_ports(query: dict[str, str | tuple[str, ...]]) -> None:
    """The ports of the multi-host options: ``host=h1:p1&host=h2:p2`` or
    ``host=h1,h2&port=p1,p2``."""
    for host in _items(query.get("host")):
        if ":" in host and not host.startswith(("/", "[")):  # not a socket folder or IPv6
            check_port(host.rpartition(":")[2], "port in the host option")
    for port in _items(query.get("port")):
        check_port(port, "port option")


def _items(value: str | tuple[str, ...] | None) -> Iterator[str]:
    """The comma-separated items of a query option given once or several times."""
    for part in (value,) if isinstance(value, str) else value or ():
        yield from part.split(",")


def _pgbouncer_option(query: dict[str, str | tuple[str, ...]]) -> bool:
    """Pop ``pgbouncer`` (``true`` or ``false``) from ``query``. Behind PgBouncer a statement
    prepared on one server connection may be looked up on another, so a prepared-statement
    cache asked for in the same URL is refused rather than silently turned off."""
    value = query.pop(PGBOUNCER_OPTION, "false")
    if value not in ("true", "false"):
        raise ConfigurationError("the database URL's pgbouncer option must be true or false")
    if value == "true" and int(str(query.get("prepared_statement_cache_size", "0"))) != 0:
        raise ConfigurationError(
            "the database URL asks for pgbouncer=true and a prepared_statement_cache_size "
            "other than 0: behind PgBouncer's transaction pooling a cached statement may be "
            "run on a server connection that never prepared it"
        )
    return value == "true"


def _ssl_option(query: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
    """libpq's ``sslmode`` becomes asyncpg's ``ssl`` (the same mode names)."""
    if "sslmode" not in query:
        return query
    query = dict(query)
    mode = query.pop("sslmode")
    if query.setdefault("ssl", mode) != mode:
        raise ConfigurationError("the database URL gives sslmode and ssl different values")
    return query
