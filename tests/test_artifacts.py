"""Content-addressed artifacts: stored once per tenant, read back exactly, size-limited."""

from __future__ import annotations

import hashlib

import pytest
from conftest import StoreFactory

from statestore import ArtifactRef, StateStore, Tenant, ValidationError


async def test_bytes_are_stored_once_under_their_sha256(store: StateStore) -> None:
    data = bytes(range(256)) * 100 + b"\x00\xff"
    ref = await store.put_artifact(data, "application/octet-stream")
    assert ref == ArtifactRef(
        hash=hashlib.sha256(data).hexdigest(), size=len(data), media_type="application/octet-stream"
    )
    assert await store.get_artifact(ref.hash) == data
    again = await store.put_artifact(data, "text/plain")  # the first media type stays
    assert again == ref
    empty = await store.put_artifact(b"")
    assert (
        empty.size == 0 and empty.media_type is None and await store.get_artifact(empty.hash) == b""
    )
    assert await store.get_artifact(hashlib.sha256(b"never").hexdigest()) is None


async def test_artifacts_belong_to_their_tenant(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    acme = store.for_tenant("acme")
    secret = await acme.put_artifact(b"acme only", "text/plain")
    assert await acme.get_artifact(secret.hash) == b"acme only"
    assert await store.get_artifact(secret.hash) is None  # the unscoped store's are default's
    assert await store.for_tenant("default").get_artifact(secret.hash) is None
    mine = await store.put_artifact(b"acme only", "application/x-other")  # stored again, apart
    assert mine.media_type == "application/x-other"
    assert (await acme.put_artifact(b"acme only")).media_type == "text/plain"


async def test_the_size_limit_and_bad_input(make_store: StoreFactory) -> None:
    store = await make_store(max_artifact_bytes=1000)
    assert (await store.put_artifact(b"x" * 1000)).size == 1000
    with pytest.raises(ValidationError, match="max_artifact_bytes"):
        await store.put_artifact(b"x" * 1001)
    with pytest.raises(ValidationError):
        await store.put_artifact("text, not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await store.get_artifact("not-a-hash")
    with pytest.raises(ValidationError):
        await store.get_artifact("A" * 64)
