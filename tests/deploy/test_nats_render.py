"""The committed NATS config is exactly a fresh render of the contract (no drift)."""

from __future__ import annotations

import re

import pytest

from deploy.nats import render
from shared.contract.subjects import SERVICE_ACCESS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("path", list(render.outputs()), ids=lambda p: p.name)
def test_committed_file_matches_a_fresh_render(path):
    assert path.exists(), f"{path} missing: run `python -m deploy.nats.render`"
    assert path.read_text(encoding="utf-8") == render.outputs()[path], (
        f"{path} is stale: run `python -m deploy.nats.render` and commit the result"
    )


def test_check_mode_reports_clean_tree():
    assert render.main(["--check"]) == 0


def test_no_secret_is_committed():
    text = render.CONF_PATH.read_text(encoding="utf-8")
    passwords = re.findall(r"^\s*password:\s*(\S+)", text, flags=re.M)
    assert len(passwords) == len(render.users())
    assert all(re.fullmatch(r"\$GRIDCASE_NATS_[A-Z]+_PASSWORD", p) for p in passwords), passwords


def test_permissions_follow_the_contract():
    perms = render.all_permissions()
    for name, access in SERVICE_ACCESS.items():
        p = perms[name]
        assert set(access.publishes) <= set(p.publish)
        assert set(access.consumes) | set(access.serves) <= set(p.subscribe)
        for stream, durable in access.durables:
            assert f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}" in p.publish
            assert f"$JS.ACK.{stream}.{durable}.>" in p.publish
        # nothing another service publishes, unless this one publishes it too
        for other, other_access in SERVICE_ACCESS.items():
            if other != name:
                leaked = (set(other_access.publishes) - set(access.publishes)) & set(p.publish)
                assert not leaked, (name, other, leaked)
        assert not any(s.startswith("$JS.API.STREAM.DELETE") or s == ">" for s in p.publish)
    assert perms["platform"].publish == (
        "gridcase.intake.report.v1",
        "gridcase.cmd.intake.submit.v1",
    )
