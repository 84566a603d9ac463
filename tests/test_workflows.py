"""Workflow definitions: publish, immutability, lookup, listing, tenants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from conftest import T0, Clock

from statestore import ConflictError, StateStore, Tenant, WorkflowDefinition

StoreFactory = Callable[..., Awaitable[StateStore]]


def defn(workflow_id: str = "wf", version: str = "1", ir: object = None, **kw: object):
    return WorkflowDefinition(
        workflow_id=workflow_id,
        version=version,
        ir={"nodes": [{"id": "a"}, {"id": "b"}], "edges": [["a", "b"]]} if ir is None else ir,
        **kw,
    )


async def test_store_and_get_round_trip(store: StateStore) -> None:
    ir = {"nodes": [{"id": "n1", "cfg": {"x": 1.5, "ok": True, "none": None}}], "s": "é😀"}
    await store.store_workflow(defn("flow", "2.0", ir))
    found = await store.get_workflow("flow", "2.0")
    assert found is not None
    assert isinstance(found, WorkflowDefinition)
    assert (found.workflow_id, found.version, found.ir) == ("flow", "2.0", ir)
    assert found.tenant_id == "default"
    assert found.created_at.utcoffset() == timedelta(0)


async def test_created_at_comes_from_store_clock(make_store: StoreFactory) -> None:
    store = await make_store(clock=Clock())
    await store.store_workflow(defn())
    found = await store.get_workflow("wf", "1")
    assert found is not None and found.created_at == T0


async def test_identical_ir_again_is_a_noop(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock=clock)
    await store.store_workflow(defn())
    clock.advance(60)
    await store.store_workflow(defn())  # same ir: no error, nothing changes
    listed = await store.list_workflows()
    assert [(w.workflow_id, w.version) for w in listed] == [("wf", "1")]
    assert listed[0].created_at == T0


async def test_different_ir_is_a_conflict_and_keeps_the_original(store: StateStore) -> None:
    await store.store_workflow(defn(ir={"v": 1}))
    with pytest.raises(ConflictError):
        await store.store_workflow(defn(ir={"v": 2}))
    found = await store.get_workflow("wf", "1")
    assert found is not None and found.ir == {"v": 1}


async def test_replace_true_overwrites(store: StateStore) -> None:
    await store.store_workflow(defn(ir={"v": 1}))
    await store.store_workflow(defn(ir={"v": 2}), replace=True)
    found = await store.get_workflow("wf", "1")
    assert found is not None and found.ir == {"v": 2}
    assert len(await store.list_workflows()) == 1


async def test_replace_true_on_a_new_version_inserts(store: StateStore) -> None:
    await store.store_workflow(defn(ir={"v": 3}), replace=True)
    found = await store.get_workflow("wf", "1")
    assert found is not None and found.ir == {"v": 3}


async def test_versions_are_independent(store: StateStore) -> None:
    await store.store_workflow(defn(version="1", ir={"v": 1}))
    await store.store_workflow(defn(version="2", ir={"v": 2}))
    one = await store.get_workflow("wf", "1")
    two = await store.get_workflow("wf", "2")
    assert one is not None and one.ir == {"v": 1}
    assert two is not None and two.ir == {"v": 2}


async def test_get_workflow_missing_is_none(store: StateStore) -> None:
    assert await store.get_workflow("nope", "1") is None
    await store.store_workflow(defn())
    assert await store.get_workflow("wf", "2") is None
    assert await store.get_workflow("other", "1") is None


async def test_list_workflows_ordered_by_id_then_version(store: StateStore) -> None:
    for workflow_id, version in [("b", "1"), ("a", "2"), ("c", "1"), ("a", "1"), ("b", "0")]:
        await store.store_workflow(defn(workflow_id, version, {"id": workflow_id, "v": version}))
    listed = await store.list_workflows()
    assert [(w.workflow_id, w.version) for w in listed] == [
        ("a", "1"),
        ("a", "2"),
        ("b", "0"),
        ("b", "1"),
        ("c", "1"),
    ]
    assert listed[0].ir == {"id": "a", "v": "1"}


async def test_list_workflows_filter(store: StateStore) -> None:
    for workflow_id, version in [("b", "1"), ("a", "2"), ("a", "1")]:
        await store.store_workflow(defn(workflow_id, version))
    assert [(w.workflow_id, w.version) for w in await store.list_workflows("a")] == [
        ("a", "1"),
        ("a", "2"),
    ]
    assert [w.version for w in await store.list_workflows(workflow_id="b")] == ["1"]
    assert await store.list_workflows("zzz") == []


async def test_list_workflows_empty(store: StateStore) -> None:
    assert await store.list_workflows() == []


async def test_model_tenant_is_kept_on_unscoped_store(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    await store.store_workflow(defn(ir={"who": "acme"}, tenant_id="acme"))
    found = await store.get_workflow("wf", "1")
    assert found is not None and found.tenant_id == "acme" and found.ir == {"who": "acme"}
    assert [w.tenant_id for w in await store.list_workflows()] == ["acme"]
    # The acme view sees it; the default tenant's view does not.
    acme = await store.for_tenant("acme").get_workflow("wf", "1")
    assert acme is not None and acme.tenant_id == "acme"
    assert await store.for_tenant("default").get_workflow("wf", "1") is None
    assert await store.for_tenant("default").list_workflows() == []


async def test_same_version_in_two_tenants_does_not_conflict(store: StateStore) -> None:
    await store.create_tenant(Tenant(id="acme", name="Acme"))
    await store.store_workflow(defn(ir={"who": "default"}))
    await store.store_workflow(defn(ir={"who": "acme"}, tenant_id="acme"))
    listed = await store.list_workflows()
    assert sorted((w.tenant_id, w.ir["who"]) for w in listed) == [  # type: ignore[index]
        ("acme", "acme"),
        ("default", "default"),
    ]
    acme = await store.for_tenant("acme").get_workflow("wf", "1")
    default = await store.for_tenant("default").get_workflow("wf", "1")
    assert acme is not None and acme.ir == {"who": "acme"}
    assert default is not None and default.ir == {"who": "default"}
