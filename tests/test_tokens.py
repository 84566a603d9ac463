"""API tokens: format, hashing, validation, expiry, revocation, last use, tenancy."""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from conftest import T0, Clock
from sqlalchemy import inspect, text

from statestore import (
    NotFoundError,
    StateStore,
    Tenant,
    TenantStatus,
    TenantSuspendedError,
    TokenRole,
    ValidationError,
)


@pytest.fixture
async def tstore(make_store: Any, clock: Clock) -> StateStore:
    store: StateStore = await make_store(clock=clock)
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    return store


@pytest.mark.memory
async def test_token_format_and_record(tstore: StateStore) -> None:
    token, record = await tstore.create_token("ci", "developer")
    prefix, token_id, secret = token.split("_", 2)
    assert prefix == "sst" and uuid.UUID(token_id) == record.id
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert record.role is TokenRole.DEVELOPER and record.tenant_id == "default"
    assert record.created_at == T0 and record.expires_at is None
    assert "secret" not in record.model_dump() and "secret_hash" not in record.model_dump()
    with pytest.raises(ValidationError):
        await tstore.create_token("ci", "superuser")
    with pytest.raises(ValidationError):
        await tstore.create_token("", "viewer")


@pytest.mark.memory
async def test_validate_returns_the_token_with_its_real_tenant(tstore: StateStore) -> None:
    token, record = await tstore.for_tenant("acme").create_token("svc", TokenRole.OPERATOR)
    found = await tstore.validate_token(token)  # unscoped: any tenant (W-10)
    assert found is not None and found.id == record.id and found.tenant_id == "acme"
    assert await tstore.for_tenant("acme").validate_token(token) is not None
    assert await tstore.for_tenant("default").validate_token(token) is None


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "sst",
        "sst__",
        "x" * 1_000_000,
        "sst_" + "0" * 32 + "_" + "\x00" * 43,
        "sst_ünïcødé_🙂",
        "sst_00000000000000000000000000000000_' OR 1=1 --aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "\ud800",
    ],
)
async def test_junk_strings_validate_to_none(tstore: StateStore, junk: str) -> None:
    await tstore.create_token("ci", "viewer")
    assert await tstore.validate_token(junk) is None


async def test_wrong_secret_unknown_id_and_non_strings_are_none(tstore: StateStore) -> None:
    token, _ = await tstore.create_token("ci", "viewer")
    prefix, token_id, secret = token.split("_", 2)
    wrong = f"{prefix}_{token_id}_{'A' * len(secret)}"
    unknown = f"{prefix}_{uuid.uuid4().hex}_{secret}"
    assert await tstore.validate_token(wrong) is None
    assert await tstore.validate_token(unknown) is None
    for value in (None, 42, b"bytes", ["list"]):
        assert await tstore.validate_token(value) is None  # type: ignore[arg-type]


@pytest.mark.memory
async def test_expired_and_revoked_tokens_are_none(tstore: StateStore, clock: Clock) -> None:
    short, short_record = await tstore.create_token(
        "short", "viewer", expires_in=timedelta(hours=1)
    )
    assert short_record.expires_at == T0 + timedelta(hours=1)
    revoked, revoked_record = await tstore.create_token("revoked", "viewer")
    assert await tstore.validate_token(short) is not None
    await tstore.revoke_token(revoked_record.id)
    await tstore.revoke_token(revoked_record.id)  # idempotent
    assert await tstore.validate_token(revoked) is None
    clock.now = T0 + timedelta(hours=1)
    assert await tstore.validate_token(short) is None
    tokens = {t.name: t for t in await tstore.list_tokens()}
    assert tokens["revoked"].revoked_at == T0  # the first revocation's time is kept
    with pytest.raises(NotFoundError):
        await tstore.revoke_token(uuid.uuid4())
    with pytest.raises(ValidationError):
        await tstore.create_token("neg", "viewer", expires_in=timedelta(seconds=-1))


async def test_last_used_at_is_written_at_most_once_a_minute(
    tstore: StateStore, clock: Clock
) -> None:
    token, _ = await tstore.create_token("ci", "viewer")
    first = await tstore.validate_token(token)
    assert first is not None and first.last_used_at == T0
    clock.now = T0 + timedelta(seconds=59)
    again = await tstore.validate_token(token)
    assert again is not None and again.last_used_at == T0
    clock.now = T0 + timedelta(seconds=60)
    later = await tstore.validate_token(token)
    assert later is not None and later.last_used_at == T0 + timedelta(seconds=60)
    (stored,) = await tstore.list_tokens()
    assert stored.last_used_at == T0 + timedelta(seconds=60)


@pytest.mark.memory
async def test_suspended_tenant_tokens_and_creation(tstore: StateStore) -> None:
    scoped = tstore.for_tenant("acme")
    token, _ = await scoped.create_token("svc", "viewer")
    tenant = await tstore.get_tenant("acme")
    assert tenant is not None
    tenant.status = TenantStatus.SUSPENDED
    await tstore.update_tenant(tenant)
    assert await tstore.validate_token(token) is None
    with pytest.raises(TenantSuspendedError):
        await scoped.create_token("more", "viewer")


@pytest.mark.memory
async def test_list_tokens_is_scoped_and_oldest_first(tstore: StateStore, clock: Clock) -> None:
    _, a = await tstore.create_token("a", "viewer")
    clock.now = T0 + timedelta(seconds=1)
    _, b = await tstore.for_tenant("acme").create_token("b", "viewer")
    clock.now = T0 + timedelta(seconds=2)
    _, c = await tstore.create_token("c", "viewer")
    assert [t.id for t in await tstore.list_tokens()] == [a.id, b.id, c.id]
    assert [t.id for t in await tstore.for_tenant("acme").list_tokens()] == [b.id]
    with pytest.raises(NotFoundError):  # another tenant's token looks missing
        await tstore.for_tenant("acme").revoke_token(a.id)


async def test_no_plaintext_token_or_secret_anywhere_in_the_database(
    tstore: StateStore,
) -> None:
    issued = [await tstore.create_token(f"t{n}", "viewer") for n in range(3)]
    for token, _ in issued:
        assert await tstore.validate_token(token) is not None

    def dump_everything(session: Any) -> str:
        chunks = []
        for table in inspect(session.connection()).get_table_names():
            for row in session.execute(text(f"SELECT * FROM {table}")):
                chunks.append(" ".join(map(str, row)))
        return "\n".join(chunks)

    everything = await tstore.run(dump_everything, write=False)
    for token, record in issued:
        secret = token.split("_", 2)[2]
        assert token not in everything and secret not in everything
        assert str(record.id) in everything or record.id.hex in everything
    hashes = await tstore.run(
        lambda s: s.execute(text("SELECT secret_hash FROM api_tokens")).scalars().all(),
        write=False,
    )
    assert all(h.startswith("$pbkdf2-sha256$") for h in hashes)


# ---------------------------------------------------------------- timing of validation


def _guesses(token: str) -> tuple[str, str]:
    """A wrong secret for the token's (existing) id, and an unknown id: one attacker guess
    of each kind, with secrets of the same form."""
    prefix, token_id, secret = token.split("_", 2)
    wrong = f"{prefix}_{token_id}_{'A' * len(secret)}"
    unknown = f"{prefix}_{uuid.uuid4().hex}_{'A' * len(secret)}"
    return wrong, unknown


async def test_unknown_id_and_wrong_secret_do_the_same_work(
    tstore: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract: timing does not tell an unknown id from a wrong secret. Structurally:
    both look up one row of the same shape (the same columns decoded) and make the same
    single passlib call on a hash of the same scheme and rounds."""
    from statestore.db import queries
    from statestore.repositories import auth

    calls: list[tuple[str, ...]] = []

    def spy(name: str, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hashes = [a for a in args if isinstance(a, str) and a.startswith("$")]
            calls.append((name, *(h.rsplit("$", 2)[0] for h in hashes)))  # scheme, rounds
            return method(*args, **kwargs)

        return wrapper

    for name in ("verify", "verify_and_update", "dummy_verify", "hash"):
        monkeypatch.setattr(auth.TOKEN_HASHES, name, spy(name, getattr(auth.TOKEN_HASHES, name)))
    lookup = queries.select_token

    def spied_lookup(*args: Any, **kwargs: Any) -> Any:
        row = lookup(*args, **kwargs)
        shape = "no row" if row is None else [type(value).__name__ for value in row]
        calls.append(("lookup", repr(shape)))
        return row

    monkeypatch.setattr(queries, "select_token", spied_lookup)
    token, _ = await tstore.create_token("ci", "viewer")
    wrong, unknown = _guesses(token)
    work = {}
    for name, guess in (("wrong secret", wrong), ("unknown id", unknown)):
        calls.clear()
        assert await tstore.validate_token(guess) is None
        work[name] = list(calls)
    assert work["wrong secret"] == work["unknown id"]
    assert [c[0] for c in work["unknown id"]] == ["lookup", "verify_and_update"]


async def _batch_medians(
    store: StateStore, guesses: tuple[str, str], batches: int, size: int
) -> tuple[list[float], list[float]]:
    """Per batch, the median time of ``validate_token`` for each of the two guesses. They
    are interleaved call by call, the first of each pair alternating, so drift, noise and
    any cost of going first or second hit both alike."""
    medians: tuple[list[float], list[float]] = ([], [])
    for _ in range(batches):
        times: tuple[list[int], list[int]] = ([], [])
        for attempt in range(size):
            order = (0, 1) if attempt % 2 == 0 else (1, 0)
            for which in order:
                start = time.perf_counter_ns()
                await store.validate_token(guesses[which])
                times[which].append(time.perf_counter_ns() - start)
        for which in (0, 1):
            medians[which].append(statistics.median(times[which]))
    return medians


def welch_t(a: list[float], b: list[float]) -> float:
    """Welch's t statistic of the difference of the means of ``a`` and ``b``."""
    spread = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return (statistics.mean(a) - statistics.mean(b)) / spread if spread else 0.0


@pytest.mark.slow
async def test_unknown_id_and_wrong_secret_take_the_same_time(tstore: StateStore) -> None:
    """Measured from outside, as an attacker would: 80 batches of 50 interleaved tries of
    each guess; Welch's t on the batch medians must not show a difference (|t| < 4.5, a
    generous bound for a noisy shared machine). The lookup that returned no row for an
    unknown id gave 10-17 µs and t from 5 to 67 here. Slow-marked: a timing test on a shared
    machine; the default suite checks the same property structurally (above)."""
    token, _ = await tstore.create_token("ci", "viewer")
    guesses = _guesses(token)
    await _batch_medians(tstore, guesses, 2, 50)  # warm up
    wrong, unknown = await _batch_medians(tstore, guesses, 80, 50)
    t = welch_t(wrong, unknown)
    gap = statistics.median(wrong) - statistics.median(unknown)
    assert abs(t) < 4.5, f"wrong secret vs unknown id: {gap / 1000:+.1f} µs, Welch t {t:.1f}"
