"""Error kinds the plumbing understands.

`BadMessage` (and pydantic's `ValidationError`) are permanent: the message goes to the DLQ.
`DomainError` is a refusal by a service's rules: a command answers it as `{"ok": false}`.
Anything else is treated as transient and retried with back-off up to `max_deliver`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pymongo.errors import BulkWriteError, ClientBulkWriteException, DuplicateKeyError, PyMongoError


class BadMessage(Exception):
    """The message can never be processed (undecodable, invalid, unknown type)."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class DomainError(Exception):
    """A rule refused the request: `code` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "message": self.message}}


class NotFound(DomainError):
    def __init__(self, what: str) -> None:
        super().__init__("not_found", f"{what} not found")


class Conflict(Exception):
    """A version-guarded write lost a race; the caller reloads and tries again."""


# WriteConflict, NoSuchTransaction (the transaction was aborted under us)
RACE_CODES = frozenset({112, 251})


def lost_race(exc: BaseException) -> bool:
    """Another writer got there first — a version guard (`Conflict`) or a transaction write
    conflict: load again, decide again, save again."""
    if isinstance(exc, Conflict):
        return True
    if not isinstance(exc, PyMongoError):
        return False
    if isinstance(exc, ClientBulkWriteException) and isinstance(exc.error, PyMongoError) and lost_race(exc.error):
        return True
    if exc.has_error_label("TransientTransactionError") or getattr(exc, "code", None) in RACE_CODES:
        return True
    return any(e.get("code") in RACE_CODES for e in _write_errors(exc))


def only_duplicates(exc: BaseException) -> bool:
    """Every write refused only because its `_id` (or unique key) exists already: someone
    stored these first — read them back rather than retry blindly."""
    if isinstance(exc, DuplicateKeyError):
        return True
    if isinstance(exc, ClientBulkWriteException) and exc.error is not None:
        return False
    if not isinstance(exc, BulkWriteError | ClientBulkWriteException):
        return False
    errors = _write_errors(exc)
    return bool(errors) and all(e.get("code") == 11000 for e in errors)


def _write_errors(exc: PyMongoError) -> list[dict[str, Any]]:
    """The per-write errors of a collection's or the client's bulk write (none for others)."""
    errors = (getattr(exc, "details", None) or {}).get("writeErrors") or []
    return list(errors.values()) if isinstance(errors, dict) else list(errors)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as `{path, message}` with no input values (they may hold personal data)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = list(err["loc"])
        if loc and loc[0] == "body":  # FastStream names the handler argument; paths start at the envelope
            loc = loc[1:]
        path = ".".join(str(p) for p in loc) or "(body)"
        out.append({"path": path, "message": err["msg"]})
    return out
