"""JSON merge patch (RFC 7396), the one definition used by ``commit_turn``'s
``state_patch`` and by the materialized-state fold."""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7396): objects merge key by
    key, ``None`` deletes a key, any other value replaces. A top-level ``None`` changes
    nothing (the store's rule: "no patch"), unlike RFC 7396 where it replaces the document.
    Neither argument is modified."""
    if patch is None:
        return target
    return _merge(target, patch)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged
