"""Database URLs: a password never reaches an error, a log line or ``store.url``, however the
URL is malformed; PostgreSQL query options (``sslmode`` and the rest) and ports are checked
at ``connect`` and refused with a :class:`ConfigurationError`."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import text

from statestore import ConfigurationError, DatabaseError, StateStore

# Every secret below contains this marker, so one substring check finds any piece of it.
SECRET = "SeCrEt"
SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def assert_no_secret(error: BaseException) -> None:
    """Neither the error nor anything chained to it shows any piece of the password."""
    for link in _chain(error):
        assert SECRET not in str(link), (type(link).__name__, str(link))
        assert SECRET not in repr(link), (type(link).__name__, repr(link))
        assert SECRET not in repr(link.args)
    assert SECRET not in "".join(traceback.format_exception(error))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger, down to DEBUG."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


# ---------------------------------------------------------------- refused at connect


REFUSED = {
    "port is not a number": f"postgresql://user:{SECRET}1@127.0.0.1:abc/db",
    "port out of range": f"postgresql://user:{SECRET}1@127.0.0.1:99999/db",
    "port zero": f"postgresql://user:{SECRET}1@127.0.0.1:0/db",
    "@ in the password": f"postgresql://user:{SECRET}a@{SECRET}b@127.0.0.1:1/db",
    "@ and / in the password": f"postgresql://user:{SECRET}a@{SECRET}b/{SECRET}c@127.0.0.1/db",
    "@ in the password, no host": f"postgresql://user:{SECRET}a@{SECRET}b@/db",
    "garbage scheme": f"postgr esql://user:{SECRET}@h/db",
    "not a URL at all": f"{SECRET}-only",
    "unsupported scheme": f"mysql://user:{SECRET}@h/db",
    "unknown option next to a query password": (
        f"postgresql://user@127.0.0.1:1/db?password={SECRET}&bogus=1"
    ),
    "unknown option with a secret value": f"postgresql://user@127.0.0.1:1/db?bogus={SECRET}",
    "bad sslmode value": f"postgresql://user:{SECRET}@127.0.0.1:1/db?sslmode={SECRET}",
    "password in the URL and the query": (
        f"postgresql://user:{SECRET}1@127.0.0.1:1/db?password={SECRET}2"
    ),
    "option given twice": (
        f"postgresql://user:{SECRET}@127.0.0.1:1/db?sslmode=require&sslmode=disable"
    ),
    "port out of range in a host option": f"postgresql://user:{SECRET}@/db?host=h:99999",
    "SQLite URL with credentials": f"sqlite://user:{SECRET}@host/x.db",
    "SQLite URL with an @ in the password": f"sqlite://user:{SECRET}a@{SECRET}b@h/x.db",
}


@pytest.mark.parametrize("url", REFUSED.values(), ids=REFUSED.keys())
async def test_malformed_urls_are_configuration_errors_without_the_password(
    url: str, logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    for opener in (StateStore.connect, StateStore.open):
        with pytest.raises(ConfigurationError) as caught:
            await opener(url)
        assert_no_secret(caught.value)
        assert "\n" not in str(caught.value)
    assert SECRET not in logs.text
    out, err = capfd.readouterr()
    assert SECRET not in out + err


async def test_the_environment_variable_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STATESTORE_DATABASE_URL", f"postgresql://u:{SECRET}@h:abc/db")
    with pytest.raises(ConfigurationError) as caught:
        await StateStore.connect()
    assert_no_secret(caught.value)
    assert SECRET not in logs.text


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://u@127.0.0.1:99999/db", "99999"),
        ("postgresql://u@127.0.0.1:0/db", "port"),
        ("postgresql://u@127.0.0.1:abc/db", "port"),
        ("postgresql://u@127.0.0.1/db?bogus=1&other=2", "'bogus'"),
        ("postgresql://u@127.0.0.1/db?sslmode=requir", "verify-full"),
        ("postgresql://u@127.0.0.1/db?ssl=true", "verify-full"),
        ("postgresql://u@127.0.0.1/db?ssl=require&sslmode=disable", "sslmode"),
        ("postgresql://u@127.0.0.1/db?port=abc", "port"),
        ("postgresql://u@/db?host=h1:1,h2:70000", "70000"),
        ("postgresql://u@127.0.0.1/db?prepared_statement_cache_size=x", "prepared_statement"),
    ],
)
async def test_bad_ports_and_options_are_named_at_connect(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await StateStore.connect(url)
    assert named in str(caught.value)
    assert "unexpected" not in str(caught.value)


async def test_unknown_option_is_named_but_its_value_is_not() -> None:
    with pytest.raises(ConfigurationError) as caught:
        await StateStore.connect(f"postgresql://u@127.0.0.1/db?api_key={SECRET}")
    assert "'api_key'" in str(caught.value) and "sslmode" in str(caught.value)
    assert_no_secret(caught.value)


# ---------------------------------------------------------------- accepted, then failing


FAILING_LATER = {
    "colon in the password": f"postgresql://user:{SECRET}a:{SECRET}b@127.0.0.1:1/db",
    "percent in the password": f"postgresql://user:{SECRET}%zz@127.0.0.1:1/db",
    "encoded @ in the password": f"postgresql://user:{SECRET}%40x@127.0.0.1:1/db",
    "slash in the password": f"postgresql://user:{SECRET}/x@127.0.0.1:1/db",
    "password as a query option": f"postgresql://user@127.0.0.1:1/db?password={SECRET}",
    "no host (Unix socket), unknown role": f"postgresql://nobody_x:{SECRET}@/db",
    "unknown database": f"postgresql://postgres:{SECRET}@127.0.0.1:5432/no_such_db_x",
}


@pytest.mark.parametrize("url", FAILING_LATER.values(), ids=FAILING_LATER.keys())
async def test_connection_failures_never_show_the_password(
    url: str, logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    store = await StateStore.connect(url)
    try:
        assert SECRET not in store.url and SECRET not in repr(store.url)
        assert SECRET not in str(store.engine.url) and SECRET not in repr(store.engine.url)
        with pytest.raises(DatabaseError) as caught:
            await store.list_tenants()
    finally:
        await store.close()
    assert_no_secret(caught.value)
    assert SECRET not in logs.text
    out, err = capfd.readouterr()
    assert SECRET not in out + err


async def test_a_query_password_is_used_and_hidden(pg_database: str) -> None:
    async with await StateStore.open(f"{pg_database}?password={SECRET}") as store:
        assert SECRET not in store.url and "***" in store.url
        assert store.engine.url.password == SECRET
        assert await store.get_tenant("default") is not None


# ---------------------------------------------------------------- sslmode


async def _server_has_ssl(url: str) -> bool:
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        return bool(await conn.fetchval("SELECT current_setting('ssl') = 'on'"))
    finally:
        await conn.close()


@pytest.mark.parametrize("option", ["sslmode", "ssl"])
@pytest.mark.parametrize("mode", SSL_MODES)
async def test_ssl_modes_reach_asyncpg(pg_database: str, option: str, mode: str) -> None:
    """Modes that allow plain text connect to a server without TLS; modes that need TLS
    fail with the driver's SSL error, which proves the mode reached asyncpg."""
    ssl_on = await _server_has_ssl(pg_database)
    store = await StateStore.connect(f"{pg_database}?{option}={mode}")
    try:
        assert f"ssl={mode}" in store.url
        if ssl_on or mode in ("disable", "allow", "prefer"):
            async with store.engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            assert await store.get_tenant("default") is not None
        else:
            with pytest.raises(DatabaseError) as caught:
                await store.get_tenant("default")
            # "rejected SSL upgrade", or for verify-*: no root certificate to verify with
            message = str(caught.value).lower()
            assert "ssl" in message or "certificate" in message
            assert "unexpected" not in str(caught.value)
    finally:
        await store.close()


async def test_same_sslmode_and_ssl_are_accepted(pg_database: str) -> None:
    async with await StateStore.open(f"{pg_database}?sslmode=disable&ssl=disable") as store:
        assert await store.get_tenant("default") is not None
