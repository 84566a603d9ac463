"""Input checks shared by every repository.

Each check raises :class:`statestore.errors.ValidationError` with a message naming the
argument, before anything reaches the database. Both databases therefore see the same
inputs and behave the same (PostgreSQL refuses NUL in text, SQLite would store it).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

import pydantic

from statestore.errors import ValidationError

MAX_IDENTIFIER_LENGTH = 255
DEFAULT_MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_INT64 = 2**63 - 1
MAX_JSON_DEPTH = 100
"""Deepest nesting of objects and arrays the store writes: ``1`` and ``"x"`` are depth 0,
``[]`` and ``{"a": 1}`` depth 1, an event kind's object counts as one level. Every read
builds pydantic models, whose validation gives up at about 250 levels; a lower limit on
every write keeps every stored value readable (with room for callers' own models around
ours), and matches common JSON parsers' defaults (Ruby 100, serde_json 128)."""

_TENANT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# An escaped NUL in json.dumps output: "\u0000" preceded by an even number of backslashes.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

dump_json = functools.partial(
    json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":")
)
"""The store's one JSON serialiser: compact, UTF-8 (no ``\\u`` escapes), NaN and Infinity
refused. :func:`json_text` checks its output and the engines bind with it
(``json_serializer``), so checked text is exactly what the database receives."""

M = TypeVar("M", bound=pydantic.BaseModel)
E = TypeVar("E", bound=Enum)


def check_text(name: str, value: object, *, max_length: int | None = None) -> str:
    """A string without NUL or lone surrogates, at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ValidationError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{name} must not contain lone surrogates") from None
    if max_length is not None and len(value) > max_length:
        raise ValidationError(f"{name} is longer than {max_length} characters")
    return value


def check_identifier(name: str, value: object) -> str:
    """An identifier: 1-255 characters, no NUL, no lone surrogates."""
    text = check_text(name, value, max_length=MAX_IDENTIFIER_LENGTH)
    if not text:
        raise ValidationError(f"{name} must not be empty")
    return text


def check_optional_identifier(name: str, value: object) -> str | None:
    return None if value is None else check_identifier(name, value)


def check_tenant_id(value: object) -> str:
    """A tenant id: 1-64 ASCII letters, digits, '.', '_' or '-'."""
    if not isinstance(value, str) or not _TENANT_ID.fullmatch(value):
        raise ValidationError(
            f"tenant id must be 1-64 characters of ASCII letters, digits, '.', '_', '-': {value!r}"
        )
    return value


def check_uuid(name: str, value: object) -> uuid.UUID:
    """A UUID, or a string holding one."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValidationError(f"{name} must be a UUID, got {value!r:.80}")


def check_int(name: str, value: object, *, minimum: int, maximum: int = MAX_INT64) -> int:
    """An int (not a bool) within ``minimum..maximum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValidationError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def check_optional_int(name: str, value: object, *, minimum: int) -> int | None:
    return None if value is None else check_int(name, value, minimum=minimum)


def check_datetime(name: str, value: object) -> datetime:
    """A timezone-aware datetime, returned in UTC.

    Both databases store UTC, so a value must exist in UTC: year 1 at +05:00 is still year 0
    there, 9999-12-31 23:00 at -05:00 already year 10000, and Python has neither."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{name} must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            f"{name} is {value.isoformat()}, outside years 1-9999 once converted to UTC"
        ) from None


MAX_DURATION = timedelta(days=365 * 100)


def check_timedelta(name: str, value: object) -> timedelta:
    """A non-negative timedelta of at most 100 years (so that "now + value" stays a date)."""
    if not isinstance(value, timedelta):
        raise ValidationError(f"{name} must be a timedelta, got {type(value).__name__}")
    if value < timedelta(0):
        raise ValidationError(f"{name} must not be negative")
    if value > MAX_DURATION:
        raise ValidationError(f"{name} must be at most {MAX_DURATION.days} days")
    return value


def check_enum(name: str, enum_type: type[E], value: object) -> E:
    """A member of ``enum_type``, or its value."""
    try:
        return enum_type(value)
    except (ValueError, TypeError):
        allowed = ", ".join(str(m.value) for m in enum_type)
        raise ValidationError(f"{name} must be one of {allowed}, got {value!r:.80}") from None


def check_json(name: str, value: object, max_bytes: int) -> Any:
    """Real JSON (see :func:`json_text`) of at most ``max_bytes``."""
    json_text(name, value, max_bytes)
    return value


def json_text(name: str, value: object, max_bytes: int, *, keys_checked: bool = False) -> str:
    """The JSON text of ``value``, checked: :func:`check_json_shape` (unless the caller
    already ran it: ``keys_checked``), no NaN/Infinity, no NUL or lone surrogates, at most
    ``max_bytes``. It is :func:`dump_json`'s text, the exact text the database driver would
    be given, so it can be bound as is."""
    if not keys_checked:
        check_json_shape(name, value)
    try:
        text = dump_json(value)
    except (TypeError, ValueError) as exc:
        raise json_error(name, exc) from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValidationError(f"{name} must not contain NUL characters")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise json_error(name, exc) from None
    if size > max_bytes:
        raise ValidationError(f"{name} is {size} bytes of JSON; the limit is {max_bytes}")
    return text


def check_json_shape(name: str, value: object) -> None:
    """Refuse what JSON would not store exactly, before anything is encoded: nesting deeper
    than :data:`MAX_JSON_DEPTH`, object keys that are not strings (JSON would turn them into
    strings), and values that are not JSON (a ``Decimal``, ``bytes``, a set or a datetime
    would come back as something else). Pydantic models count as the objects they dump to;
    a model may name fields its own validation parses back from JSON (see
    :meth:`statestore.event_kinds.BaseEventKind.json_typed_fields`).

    One iterative walk: it cannot overflow the stack, whatever the depth."""
    problem = _shape_problem(value)
    if problem is not None:
        raise ValidationError(f"{name} {problem}")


def json_error(name: str, exc: TypeError | ValueError) -> ValidationError:
    """How a value that cannot be encoded as JSON text is reported (by :func:`json_text`,
    and by event kinds, which pydantic encodes)."""
    if isinstance(exc, UnicodeError):
        return ValidationError(f"{name} must not contain lone surrogates")
    reason = str(exc).partition("\n")[0][:120]
    return ValidationError(f"{name} is not valid JSON: {reason}")


check_str_keys = check_json_shape
"""The name the event repository calls :func:`check_json_shape` by."""


# How a value nested too deep is reported, by the walk below and for pydantic's own
# recursion limit (:func:`_summarise`).
_TOO_DEEP = f"is nested deeper than {MAX_JSON_DEPTH} levels of objects and arrays"


def _shape_problem(value: object) -> str | None:
    """What :func:`check_json_shape` refuses in ``value`` (the end of a sentence naming it),
    or ``None``. Depth-first, so a cyclic value stops at the depth limit."""
    if not isinstance(value, _CONTAINERS):
        return _leaf_problem(value)
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return _TOO_DEEP
        children, typed = _children(item)
        if children is None:
            return "must have string object keys"
        for key, child in children:
            if type(child) in _SCALAR_TYPES:  # the common case, decided fastest
                continue
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
            elif key in typed and isinstance(child, typed[key]):
                continue  # the model parses this field back into the same type
            elif (problem := _leaf_problem(child)) is not None:
                return problem
    return None


_NO_TYPED_FIELDS: dict[str, type] = {}


def _children(item: object) -> tuple[Iterable[tuple[Any, object]] | None, Mapping[str, type]]:
    """The (key or index, value) pairs inside a container (``None`` if an object key is not
    a string), and the fields of a model that may hold a typed value."""
    if isinstance(item, dict):
        # json.dumps silently turns int/float/bool/None keys into strings; a round trip
        # would not give the caller's value back, so such keys are refused.
        if not all(isinstance(key, str) for key in item):
            return None, _NO_TYPED_FIELDS
        return item.items(), _NO_TYPED_FIELDS
    if isinstance(item, pydantic.BaseModel):  # dumped as its fields (and extras)
        fields = vars(item).items()
        extra = item.__pydantic_extra__
        if extra and not all(isinstance(key, str) for key in extra):
            return None, _NO_TYPED_FIELDS
        hook = getattr(type(item), "json_typed_fields", None)
        typed = hook(item) if callable(hook) else _NO_TYPED_FIELDS
        return (itertools.chain(fields, extra.items()) if extra else fields), typed
    assert isinstance(item, list | tuple)
    return enumerate(item), _NO_TYPED_FIELDS


def _leaf_problem(value: object) -> str | None:
    """Why a value that is not a container cannot be stored as JSON, or ``None``."""
    if isinstance(value, _SCALARS):
        return None
    return f"holds a {type(value).__name__}, which is not a JSON value"


_CONTAINERS = (dict, list, tuple, pydantic.BaseModel)
# bool is an int; str, int and float subclasses (enums) are written as their value.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
_SCALARS = (str, int, float, type(None))


def coerce_model(name: str, model_type: type[M], value: object) -> M:
    """``value`` as a ``model_type`` instance, re-validated (models are mutable)."""
    try:
        if isinstance(value, model_type | dict):
            # Models re-validate instances ("always"), keeping which fields were set.
            return model_type.model_validate(value)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"{name} is invalid: {_summarise(exc)}") from None
    raise ValidationError(f"{name} must be a {model_type.__name__}, got {type(value).__name__}")


def _summarise(exc: pydantic.ValidationError) -> str:
    """The first errors of ``exc`` in one short line: a deep value's location alone can run
    to kilobytes ("state.list.0.list.0…"), so locations are cut and pydantic's recursion
    limit is reported like the store's own nesting limit."""
    parts = []
    for error in exc.errors()[:3]:
        loc = [str(p) for p in error["loc"]]
        if error["type"] in _PYDANTIC_TOO_DEEP:
            parts.append(f"{loc[0] if loc else 'value'} {_TOO_DEEP}")
            break
        location = ".".join(loc) or "value"
        if len(location) > _MAX_LOCATION:
            location = location[: _MAX_LOCATION - 1] + "…"
        parts.append(f"{location}: {error['msg']}")
    summary = "; ".join(parts)
    return summary if len(summary) <= _MAX_SUMMARY else summary[: _MAX_SUMMARY - 1] + "…"


_PYDANTIC_TOO_DEEP = frozenset({"recursion_loop", "recursion_depth_exceeded"})
_MAX_LOCATION = 60
_MAX_SUMMARY = 160


def pydantic_error(name: str, exc: pydantic.ValidationError) -> ValidationError:
    """Our ValidationError for a pydantic one, naming the failing fields."""
    return ValidationError(f"{name} is invalid: {_summarise(exc)}")
