"""Wiring of the intake service: subscribers, indexes, background loops."""

from __future__ import annotations

from shared.app import Runtime


def register(rt: Runtime) -> None:
    """Declare this service's subscribers and loops on the runtime (filled by its issue)."""
