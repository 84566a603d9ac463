"""Hand-written SQL that bench/turns.py still imports from bench/run.py (its raw turn). The
hot-path cells of bench/run.py no longer use it: their raw SQL is the store's own
(bench/statements.py). Delete this module once bench/turns.py builds its raw statements the
same way."""

from __future__ import annotations

ITEM_COLUMNS = (
    "id, execution_id, node_id, queue_type, payload, status, priority, attempt, max_attempts,"
    " available_at, worker_id, lease_expires_at, lease_fence, last_error, created_at,"
    " updated_at, dead_lettered_at, tenant_id"
)
_TEMPLATES = {
    "insert_event": (
        "INSERT INTO events (id, execution_id, sequence, event_type, kind, created_at, tenant_id)"
        " VALUES ({0}, {1}, {2}, {3}, {4}, {5}, {6})"
    ),
    # Parameters: id, now, worker, fence.
    "complete": (
        "UPDATE work_items SET status = 'completed', lease_expires_at = NULL, updated_at = {1}"
        " WHERE id = {0} AND status = 'claimed' AND worker_id = {2} AND lease_fence = {3}"
        " RETURNING id"
    ),
}
SQLITE_SQL = {name: sql.format(*[f"?{i}" for i in range(1, 8)]) for name, sql in _TEMPLATES.items()}
PG_SQL = {name: sql.format(*[f"${i}" for i in range(1, 8)]) for name, sql in _TEMPLATES.items()}
SQLITE_FILL = (
    f"INSERT INTO work_items ({ITEM_COLUMNS}) VALUES (?1, ?2, 'summarise', ?3, ?4,"
    " 'pending', 0, 0, 3, ?5, NULL, NULL, 0, NULL, ?5, ?5, NULL, ?6)"
)
