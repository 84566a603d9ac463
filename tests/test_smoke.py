from statestore import StateStore, WorkflowDefinition


async def test_store_round_trips_a_workflow(store: StateStore) -> None:
    await store.store_workflow(WorkflowDefinition(workflow_id="wf", version="1", ir={"n": 1}))
    found = await store.get_workflow("wf", "1")
    assert found is not None and found.ir == {"n": 1}
