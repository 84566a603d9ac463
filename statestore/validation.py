"""Input checks shared by every repository.

Each check raises :class:`statestore.errors.ValidationError` with a message naming the
argument, before anything reaches the database. Both databases therefore see the same
inputs and behave the same (PostgreSQL refuses NUL in text, SQLite would store it).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

import pydantic

from statestore.errors import ValidationError

MAX_IDENTIFIER_LENGTH = 255
DEFAULT_MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_INT64 = 2**63 - 1

_TENANT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# An escaped NUL in json.dumps output: "\u0000" preceded by an even number of backslashes.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

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
    """A timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{name} must be timezone-aware")
    return value


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
    """Real JSON (no NaN/Infinity, str keys), no NUL or lone surrogates, at most ``max_bytes``."""
    json_text(name, value, max_bytes)
    return value


def json_text(name: str, value: object, max_bytes: int, *, keys_checked: bool = False) -> str:
    """:func:`check_json`, returning the JSON text: the exact text the database driver would
    be given (the engines' ``json_serializer``), so it can be bound as is.
    ``keys_checked``: the caller already ran :func:`check_str_keys` on the value."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{name} is not valid JSON: {exc}") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValidationError(f"{name} must not contain NUL characters")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{name} must not contain lone surrogates") from None
    if size > max_bytes:
        raise ValidationError(f"{name} is {size} bytes of JSON; the limit is {max_bytes}")
    if not keys_checked:
        check_str_keys(name, value)
    return text


def check_str_keys(name: str, value: object) -> None:
    """Refuse objects with non-string keys (JSON would silently turn them into strings)."""
    if not _has_only_str_keys(value):
        raise ValidationError(f"{name} must have string object keys")


def _has_only_str_keys(value: object) -> bool:
    # json.dumps silently turns int/float/bool/None keys into strings; a round trip would
    # not give the caller's value back, so such keys are refused.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return False
                if isinstance(child, _CONTAINERS):
                    stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(child for child in item if isinstance(child, _CONTAINERS))
        elif isinstance(item, pydantic.BaseModel):  # dumped as its fields (and extras)
            stack.append(vars(item))
            if item.__pydantic_extra__:
                stack.append(item.__pydantic_extra__)
    return True


_CONTAINERS = (dict, list, tuple, pydantic.BaseModel)


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
    parts = []
    for error in exc.errors()[:3]:
        location = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def pydantic_error(name: str, exc: pydantic.ValidationError) -> ValidationError:
    """Our ValidationError for a pydantic one, naming the failing fields."""
    return ValidationError(f"{name} is invalid: {_summarise(exc)}")
