"""Generated files in the repo (AsyncAPI per service, event catalogue) must match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.docs import write_docs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_committed_generated_docs_are_fresh() -> None:
    stale = write_docs(ROOT / "docs", check=True)
    assert stale == [], f"stale generated docs (run `make docs`): {stale}"
