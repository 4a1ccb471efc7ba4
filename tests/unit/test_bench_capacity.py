"""The throughput probe's capacity: what the whole system took in, not one stage's slope."""

import pytest

from bench.system import drained_rate

pytestmark = pytest.mark.unit


def test_capacity_is_what_was_published_over_the_time_until_every_durable_drained() -> None:
    # `assigned` goes flat at 4 s while the later consumers still work until 10 s
    run = {"publish_s": 2.0, "published": 3000,
           "samples": [(0.0, 0, 0), (2.0, 1500, 4000), (4.0, 3000, 2500), (6.0, 3000, 1200), (10.0, 3000, 40)]}
    assert drained_rate(run) == pytest.approx(300.0)


def test_no_capacity_from_a_run_that_never_drained_while_sampled() -> None:
    run = {"publish_s": 2.0, "published": 3000, "samples": [(0.0, 0, 0), (2.0, 1500, 4000), (30.0, 3000, 900)]}
    assert drained_rate(run) is None
    assert drained_rate({"publish_s": 0.0, "published": 0, "samples": [(1.0, 0, 0)]}) is None
