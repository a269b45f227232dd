"""The arbiter's restart/give-up rule, as a table (no processes)."""

from __future__ import annotations

import pytest

from supervisor.arbiter import STABLE_AFTER, AfterDeath, after_death


@pytest.mark.parametrize("quick_deaths,lived,max_restarts,expected", [
    # A worker that lived long enough starts a new count and restarts at once.
    (0, STABLE_AFTER, 10, AfterDeath(0, give_up=False, delay=0.0)),
    (7, STABLE_AFTER + 60, 10, AfterDeath(0, give_up=False, delay=0.0)),
    # The first quick death restarts at once; later ones wait longer each time.
    (0, 0.1, 10, AfterDeath(1, give_up=False, delay=0.0)),
    (1, 0.1, 10, AfterDeath(2, give_up=False, delay=0.2)),
    (2, 0.1, 10, AfterDeath(3, give_up=False, delay=0.4)),
    (4, 0.1, 10, AfterDeath(5, give_up=False, delay=1.6)),
    # ... never longer than 2 s.
    (5, 0.1, 10, AfterDeath(6, give_up=False, delay=2.0)),
    (9, 0.1, 10, AfterDeath(10, give_up=False, delay=2.0)),
    # More than max_restarts quick deaths in a row: give up.
    (10, 0.1, 10, AfterDeath(11, give_up=True)),
    (3, 0.1, 3, AfterDeath(4, give_up=True)),
    (0, 0.1, 0, AfterDeath(1, give_up=True)),
])
def test_after_death(quick_deaths: int, lived: float, max_restarts: int, expected: AfterDeath) -> None:
    assert after_death(quick_deaths, lived, max_restarts) == expected
