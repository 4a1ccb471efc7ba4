"""Error kinds the plumbing understands.

`BadMessage` (and pydantic's `ValidationError`) are permanent: the message goes to the DLQ.
`DomainError` is a refusal by a service's rules: a command answers it as `{"ok": false}`.
Anything else is treated as transient and retried with back-off up to `max_deliver`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


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
