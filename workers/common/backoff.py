"""Capped exponential backoff with jitter, as a pure function.

Jitter matters: after a backend outage a thousand hosts must not retry in lockstep.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rand: float | None = None) -> float:
    """Delay before retry number `attempt` (0-based): "equal jitter", so the wait
    is at least half the exponential step (no hammering) and at most `cap`."""
    step = min(cap, base * 2.0 ** min(attempt, 32))
    r = random.random() if rand is None else rand
    return step / 2 + r * step / 2
